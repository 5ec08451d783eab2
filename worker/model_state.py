"""The loaded model must not change under the worker: dtypes and bytes of every weight.

A diffusers call can silently convert modules that pipelines share (``from_pipe``
without a dtype upcasts a bf16 model to float32 in place). Such a change doubles the
GPU memory and slows every later job while the manifest still names the old dtype, so
the worker takes a footprint of its weights once they are loaded and compares it after
every job: any difference stops the worker, which is restarted with a fresh load.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from common.errors import WorkerBroken


@dataclass(frozen=True)
class ComponentFootprint:
    """One module's weights (parameters and buffers): bytes per dtype, and devices."""

    bytes_by_dtype: tuple[tuple[str, int], ...]
    devices: tuple[str, ...]

    @property
    def total_bytes(self) -> int:
        """All bytes of the component's weights."""
        return sum(size for _, size in self.bytes_by_dtype)

    def describe(self) -> str:
        """``bfloat16 1.2 GB on cuda:0`` and the like, for logs and errors."""
        parts = ", ".join(f"{dtype} {_human(size)}" for dtype, size in self.bytes_by_dtype)
        return f"{parts or 'no weights'} on {'+'.join(self.devices) or '-'}"


Footprint = dict[str, ComponentFootprint]


def _modules(pipeline: object) -> dict[str, torch.nn.Module]:
    components: dict[str, object] = getattr(pipeline, "components", {})
    return {name: part for name, part in sorted(components.items())
            if isinstance(part, torch.nn.Module)}


def _weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


def footprint(weights: dict[str, list[torch.Tensor]]) -> Footprint:
    """Bytes per dtype and devices of each named list of tensors."""
    result: Footprint = {}
    for name, tensors in weights.items():
        sizes: dict[str, int] = defaultdict(int)
        devices: set[str] = set()
        for tensor in tensors:
            sizes[str(tensor.dtype).removeprefix("torch.")] += tensor.nbytes
            devices.add(str(tensor.device))
        result[name] = ComponentFootprint(tuple(sorted(sizes.items())), tuple(sorted(devices)))
    return result


Signature = dict[str, dict[tuple[torch.dtype, torch.device], int]]


def _signature(weights: dict[str, list[torch.Tensor]]) -> Signature:
    """Bytes per (dtype, device) of each component, in torch's own objects: the cheap
    comparison made after every job (no strings built unless something changed)."""
    result: Signature = {}
    for name, tensors in weights.items():
        sizes: dict[tuple[torch.dtype, torch.device], int] = defaultdict(int)
        for tensor in tensors:
            sizes[tensor.dtype, tensor.device] += tensor.nbytes
        result[name] = dict(sizes)
    return result


def differences(expected: Footprint, found: Footprint) -> list[str]:
    """What changed between two footprints, one line per component (empty: nothing)."""
    lines = []
    for name in sorted(set(expected) | set(found)):
        before, after = expected.get(name), found.get(name)
        if before == after:
            continue
        was = before.describe() if before else "absent"
        now = after.describe() if after else "absent"
        lines.append(f"{name}: {was} -> {now}")
    return lines


class ModelStateGuard:
    """Remembers the loaded weights' footprint and checks that it still holds.

    The weight tensors are listed once: a conversion such as ``module.to(dtype)``
    changes those very tensors in place, so checking them costs a fraction of a
    millisecond per job instead of a walk over every submodule. A conversion that
    makes new tensors instead (a move to another kind of device), or a component
    swapped for another object, is noticed by identity and measured afresh.
    """

    def __init__(self, pipeline: object) -> None:
        self.pipeline = pipeline
        self.modules = _modules(pipeline)
        self.weights = {name: _weights(module) for name, module in self.modules.items()}
        self.expected = footprint(self.weights)
        self.signature = _signature(self.weights)

    def _same_objects(self, modules: dict[str, torch.nn.Module]) -> bool:
        if modules.keys() != self.modules.keys():
            return False
        for name, module in modules.items():
            listed = self.weights[name]
            first = next(iter(module.parameters()), None)
            if module is not self.modules[name] or (listed and first is not listed[0]):
                return False
        return True

    def check(self, after: str) -> None:
        """Raise ``WorkerBroken`` if any weight changed dtype, size or device."""
        modules = _modules(self.pipeline)
        if self._same_objects(modules):
            if _signature(self.weights) == self.signature:
                return
            changed = differences(self.expected, footprint(self.weights))
        else:
            found = footprint({name: _weights(module) for name, module in modules.items()})
            changed = differences(self.expected, found) or ["a component was replaced"]
        if changed:
            raise WorkerBroken(f"the loaded model changed during {after}: " + "; ".join(changed))

    def parameter_bytes(self) -> dict[str, dict[str, int]]:
        """Bytes per dtype of each component, as loaded (for the manifest)."""
        return {name: dict(part.bytes_by_dtype) for name, part in self.expected.items()}


def _human(size: int) -> str:
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for unit in ("KB", "MB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.2f} GB"
