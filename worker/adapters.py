"""The LoRA adapters a worker keeps loaded: fetched by checksum, applied per job.

A job names adapters pinned to file checksums (``common.adapters``). Before each job the
worker makes exactly that set active, at the job's weights, through diffusers' own LoRA
API on the shared transformer (``load_lora_weights``, ``set_adapters``; peft underneath),
and a job that names none runs with LoRA disabled: the base weights are never merged or
changed, so no brand's style reaches the next job. Loaded adapters stay resident, least
recently used first out, within a byte budget (the files' sizes: what the LoRA layers hold).

A compiled transformer (``ZQ_COMPILE``) must not change shape under its compiled graph, so
there the set works in hot-swap mode: before compiling, ``AdapterSet.prepare_hotswap``
loads a fixed number of empty adapter *slots* of the largest rank served
(``ZQ_ADAPTER_SLOTS``, ``ZQ_ADAPTER_MAX_RANK``) with every scale a tensor, so the graph
already holds the LoRA layers. A job's adapter is then copied into the least recently used
slot (``load_lora_weights(..., hotswap=True)``) and the job's weights are written into the
slots' scale tensors; a plain job sets every scale to zero. No module, name or flag the
graph was traced on ever changes, so nothing recompiles.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from common.adapter_registry import MAX_ADAPTER_BYTES, file_key
from common.adapters import Adapter
from common.errors import AdapterFailed, ObjectNotFound, StorageError
from common.storage import ObjectStore

log = logging.getLogger(__name__)

# What the slots hold LoRA layers for, in every transformer block (main and refiners): the
# attention projections that Z-Image LoRAs train, and the feed-forward that many also do.
# A hot-swapped adapter can only touch modules its slot already wraps.
SLOT_TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
                "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")
_SLOTS_ATTRIBUTE = "_zq_adapter_slots"
_LORA_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


@dataclass(frozen=True)
class HotswapSlots:
    """The empty adapter slots prepared in a transformer before it was compiled."""

    names: tuple[str, ...]
    max_rank: int
    # module name -> (out_features, in_features) of the layer each slot wraps
    shapes: dict[str, tuple[int, int]]
    dtype: torch.dtype
    device: torch.device

    def empty_state_dict(self) -> dict[str, torch.Tensor]:
        """A LoRA of rank ``max_rank`` that changes nothing, in diffusers' key layout."""
        state: dict[str, torch.Tensor] = {}
        for module, (out_features, in_features) in self.shapes.items():
            for key, shape in (("lora_A", (self.max_rank, in_features)),
                               ("lora_B", (out_features, self.max_rank))):
                state[f"transformer.{module}.{key}.weight"] = torch.zeros(
                    shape, dtype=self.dtype, device=self.device)
        return state


def hotswap_slots(pipeline: Any) -> HotswapSlots | None:
    """The slots ``AdapterSet.prepare_hotswap`` put in ``pipeline``'s transformer, if any."""
    slots: HotswapSlots | None = getattr(getattr(pipeline, "transformer", None),
                                         _SLOTS_ATTRIBUTE, None)
    return slots


@dataclass
class AdapterStats:
    """What the adapter set did, for metrics: loads (misses), hits and evictions."""

    loads: int = 0
    hits: int = 0
    evictions: int = 0
    load_seconds: float = 0.0


def peft_name(adapter: Adapter) -> str:
    """The name an adapter file is loaded under: its checksum, so a name that was
    re-registered to another file is another adapter."""
    return f"a{adapter.sha256}"


class AdapterSet:
    """The adapters loaded into one pipeline's transformer (shared by its derived
    img2img and inpaint pipelines), and which of them the current job uses.

    With slots prepared in the transformer (``prepare_hotswap``) it works in hot-swap mode.
    """

    def __init__(self, pipeline: Any, store: ObjectStore, cache_dir: Path,
                 budget_bytes: int, hotswap: HotswapSlots | None = None) -> None:
        self.pipeline = pipeline
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.budget_bytes = budget_bytes
        self.resident: OrderedDict[str, int] = OrderedDict()  # peft name -> bytes
        self.stats = AdapterStats()
        self._enabled = False
        self.hotswap = hotswap or hotswap_slots(pipeline)
        # Hot-swap mode: slot -> sha256 of the adapter in it (None: empty), least recent first.
        self.slots: OrderedDict[str, str | None] = OrderedDict(
            (name, None) for name in (self.hotswap.names if self.hotswap else ()))
        # The weight each slot is applied at now (0: off), and each slot's LoRA layers with
        # the scale its adapter's own alpha and rank give them (at weight 1).
        self.slot_weights: dict[str, float] = dict.fromkeys(self.slots, 0.0)
        self._unit_scales: dict[str, list[tuple[Any, float]]] = {name: [] for name in self.slots}

    @staticmethod
    def prepare_hotswap(pipeline: Any, slots: int, max_rank: int) -> HotswapSlots:
        """Load ``slots`` empty adapter slots into the transformer, to be compiled next.

        Must run before the transformer is compiled and before any other adapter: the
        compiled graph then holds the slots' LoRA layers, and jobs' adapters are swapped
        into them (``AdapterSet`` finds the slots itself).
        """
        transformer = pipeline.transformer
        sample = next(transformer.parameters())
        shapes = {name: (module.out_features, module.in_features)
                  for name, module in transformer.named_modules()
                  if isinstance(module, torch.nn.Linear) and name.endswith(SLOT_TARGETS)}
        prepared = HotswapSlots(tuple(f"slot{index}" for index in range(slots)), max_rank,
                                shapes, sample.dtype, sample.device)
        pipeline.enable_lora_hotswap(target_rank=max_rank)
        with warnings.catch_warnings():
            # peft warns that a second adapter joins the first: the slots are meant to.
            warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
            for name in prepared.names:
                pipeline.load_lora_weights(prepared.empty_state_dict(), adapter_name=name)
        _activate_slots(transformer, prepared, check_compiled="error")
        setattr(transformer, _SLOTS_ATTRIBUTE, prepared)
        log.info("%d adapter slots of rank %d prepared for hot-swapping", slots, max_rank)
        return prepared

    @property
    def resident_bytes(self) -> int:
        """Bytes of the adapters loaded now."""
        return sum(self.resident.values())

    def resident_sha256s(self) -> frozenset[str]:
        """The checksums of the adapter files loaded now (a job naming only these loads
        nothing)."""
        if self.hotswap is not None:
            return frozenset(sha256 for sha256 in self.slots.values() if sha256 is not None)
        return frozenset(name[1:] for name in self.resident)

    def apply(self, adapters: tuple[Adapter, ...]) -> None:
        """Make exactly ``adapters`` active at their weights (none: LoRA off).

        Raises ``AdapterFailed`` for a file that cannot be fetched or loaded; LoRA is then
        left off, so the next job starts clean.
        """
        if self.hotswap is not None:
            self._apply_hotswap(adapters)
            return
        if not adapters:
            self._disable()
            return
        try:
            names = [self._ensure(adapter, keep={peft_name(a) for a in adapters})
                     for adapter in adapters]
            self.pipeline.enable_lora()
            self.pipeline.set_adapters(names, [adapter.weight for adapter in adapters])
            self._enabled = True
        except (AdapterFailed, StorageError):  # storage trouble is retried like any other
            self._disable()
            raise
        except Exception as exc:  # peft/diffusers refusing the file: this job's problem
            self._disable()
            raise AdapterFailed(f"cannot apply adapters {[a.name for a in adapters]}: "
                                f"{type(exc).__name__}: {exc}") from exc

    def _apply_hotswap(self, adapters: tuple[Adapter, ...]) -> None:
        weights = dict.fromkeys(self.slots, 0.0)
        try:
            keep = {str(adapter.sha256) for adapter in adapters}
            if len(keep) > len(self.slots):
                raise AdapterFailed(f"a job may name at most {len(self.slots)} adapters on this "
                                    f"compiled worker (ZQ_ADAPTER_SLOTS); got {len(keep)}")
            for adapter in adapters:
                weights[self._ensure_slot(adapter, keep)] += adapter.weight
        except (AdapterFailed, StorageError):
            self._set_slot_weights(dict.fromkeys(self.slots, 0.0))
            raise
        except Exception as exc:
            self._set_slot_weights(dict.fromkeys(self.slots, 0.0))
            raise AdapterFailed(f"cannot apply adapters {[a.name for a in adapters]}: "
                                f"{type(exc).__name__}: {exc}") from exc
        self._set_slot_weights(weights)

    def _set_slot_weights(self, weights: dict[str, float]) -> None:
        """Write each slot's weight into its layers' scale tensors, in place: the compiled
        graph reads them as inputs, so no new value recompiles it."""
        for slot, weight in weights.items():
            if self.slot_weights.get(slot) == weight:
                continue
            for module, unit in self._unit_scales[slot]:
                module.scaling[slot].fill_(weight * unit)
            self.slot_weights[slot] = weight

    def _ensure_slot(self, adapter: Adapter, keep: set[str]) -> str:
        """The slot holding ``adapter``, swapped into the least recently used one if none."""
        assert self.hotswap is not None
        if adapter.sha256 is None:
            raise AdapterFailed(f"adapter {adapter.name} was not pinned to a file at submit")
        for slot, held in self.slots.items():
            if held == adapter.sha256:
                self.slots.move_to_end(slot)
                self.stats.hits += 1
                return slot
        path = self._fetch(adapter)
        self._check_fits_slots(adapter, path)
        free = [slot for slot, held in self.slots.items() if held is None]
        slot = (free or [slot for slot, held in self.slots.items() if held not in keep])[0]
        evicted = self.slots[slot]
        if evicted is not None:
            self._forget(f"a{evicted}")
        self.slots[slot] = None  # until the swap succeeds, the slot's weights are unknown
        self._unit_scales[slot] = []
        started = time.perf_counter()
        try:
            self.pipeline.load_lora_weights(str(path), adapter_name=slot, hotswap=True)
        except Exception as exc:
            self._reset_slot(slot)
            raise AdapterFailed(f"adapter {adapter.name} ({adapter.sha256[:12]}) does not fit "
                                f"this model: {type(exc).__name__}: {exc}") from exc
        self.stats.load_seconds += time.perf_counter() - started
        self.stats.loads += 1
        self._unit_scales[slot] = _unit_scales(self.pipeline, slot)
        self.slot_weights[slot] = 1.0  # what the swap left in the scale tensors
        self.slots[slot] = adapter.sha256
        self.slots.move_to_end(slot)
        self.resident[peft_name(adapter)] = path.stat().st_size
        log.info("adapter %s (%s) swapped into %s", adapter.name, adapter.sha256[:12], slot)
        return slot

    def _forget(self, name: str) -> None:
        """Count an unloaded adapter (``name``: its peft name) out, and drop its file."""
        self.resident.pop(name, None)
        (self.cache_dir / f"{name[1:]}.safetensors").unlink(missing_ok=True)
        self.stats.evictions += 1

    def _check_fits_slots(self, adapter: Adapter, path: Path) -> None:
        """Refuse, before anything is swapped, a file the slots cannot take."""
        assert self.hotswap is not None
        label = f"adapter {adapter.name} ({str(adapter.sha256)[:12]})"
        # Read here and again by the swap, which needs the path: from a dict, diffusers
        # would drop the file's metadata (its lora_alpha, hence the adapter's scale).
        try:
            state = self.pipeline.lora_state_dict(str(path))
        except Exception as exc:
            raise AdapterFailed(f"{label} does not fit this model: {type(exc).__name__}: "
                                f"{exc}") from exc
        rank = 0
        for key, tensor in state.items():
            if not key.startswith("transformer."):
                continue  # as diffusers' own loader, which reads the transformer's part only
            module = key.removeprefix("transformer.").removesuffix(".lora_A.weight"
                                                                   ).removesuffix(".lora_B.weight")
            if not key.endswith(_LORA_SUFFIXES) or getattr(tensor, "ndim", 0) != 2:
                raise AdapterFailed(f"{label}: {key} is not a plain LoRA weight; a compiled "
                                    "worker hot-swaps plain LoRA only")
            if module not in self.hotswap.shapes:
                raise AdapterFailed(f"{label} adapts {module}, which this compiled worker's "
                                    f"adapter slots do not cover ({', '.join(SLOT_TARGETS)})")
            out_features, in_features = self.hotswap.shapes[module]
            is_a = key.endswith(".lora_A.weight")
            layer_rank, side = (tensor.shape[0], tensor.shape[1]) if is_a else (
                tensor.shape[1], tensor.shape[0])
            if side != (in_features if is_a else out_features):
                raise AdapterFailed(f"{label} does not fit this model: {key} has shape "
                                    f"{tuple(tensor.shape)}")
            rank = max(rank, int(layer_rank))
        if rank > self.hotswap.max_rank:
            raise AdapterFailed(f"{label} has LoRA rank {rank}, above this worker's limit of "
                                f"{self.hotswap.max_rank} (ZQ_ADAPTER_MAX_RANK)")

    def _reset_slot(self, slot: str) -> None:
        """Empty a slot a failed swap may have left half written (or removed)."""
        assert self.hotswap is not None
        empty = self.hotswap.empty_state_dict()
        if slot in getattr(self.pipeline.transformer, "peft_config", {}):
            self.pipeline.load_lora_weights(empty, adapter_name=slot, hotswap=True)
            self._unit_scales[slot] = _unit_scales(self.pipeline, slot)
            self.slot_weights[slot] = 1.0
            self._set_slot_weights({slot: 0.0})
            return
        # diffusers deletes an adapter whose load failed: the slot is put back, and the
        # compiled blocks recompile once for it rather than serve without it.
        log.warning("adapter slot %s was removed by a failed swap; loading it again "
                    "(the transformer recompiles)", slot)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Already found a `peft_config`", UserWarning)
            self.pipeline.load_lora_weights(empty, adapter_name=slot)
        _activate_slots(self.pipeline.transformer, self.hotswap, check_compiled="ignore")
        # That set every slot's scale to 0; the other slots' adapters keep their unit scales.
        self.slot_weights = dict.fromkeys(self.slots, 0.0)
        self._unit_scales[slot] = []

    def _disable(self) -> None:
        if self._enabled:
            self.pipeline.disable_lora()
            self._enabled = False

    def _ensure(self, adapter: Adapter, keep: set[str]) -> str:
        name = peft_name(adapter)
        if adapter.sha256 is None:
            raise AdapterFailed(f"adapter {adapter.name} was not pinned to a file at submit")
        if name in self.resident:
            self.resident.move_to_end(name)
            self.stats.hits += 1
            return name
        path = self._fetch(adapter)
        started = time.perf_counter()
        try:
            self.pipeline.load_lora_weights(str(path), adapter_name=name)
        except Exception as exc:
            with contextlib.suppress(Exception):  # whatever the failed load left behind
                self.pipeline.delete_adapters([name])
            raise AdapterFailed(f"adapter {adapter.name} ({adapter.sha256[:12]}) does not fit "
                                f"this model: {type(exc).__name__}: {exc}") from exc
        self.stats.load_seconds += time.perf_counter() - started
        self.stats.loads += 1
        self.resident[name] = path.stat().st_size
        log.info("adapter %s (%s) loaded", adapter.name, adapter.sha256[:12])
        self._evict(keep)
        return name

    def _fetch(self, adapter: Adapter) -> Path:
        """The adapter's file on local disk, checked against its checksum."""
        sha256 = str(adapter.sha256)
        path = self.cache_dir / f"{sha256}.safetensors"
        if path.is_file():
            return path
        try:
            data = self.store.get(file_key(sha256), max_bytes=MAX_ADAPTER_BYTES)
        except ObjectNotFound:
            raise AdapterFailed(f"adapter {adapter.name}: no file {sha256[:12]} in storage "
                                "(was it registered with zq adapters add?)") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise AdapterFailed(f"adapter {adapter.name}: the stored file does not match its "
                                f"checksum {sha256[:12]}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        part.write_bytes(data)
        part.replace(path)
        return path

    def _evict(self, keep: set[str]) -> None:
        """Unload least recently used adapters, never those of the current job."""
        for name in list(self.resident):
            if self.resident_bytes <= self.budget_bytes:
                return
            if name in keep:
                continue
            self.pipeline.delete_adapters([name])
            self._forget(name)


def _activate_slots(transformer: Any, slots: HotswapSlots, check_compiled: str) -> None:
    """All slots active at scale 0, each scale a tensor (changed in place, never replaced)."""
    from peft.utils.hotswap import prepare_model_for_compiled_hotswap

    transformer.set_adapters(list(slots.names), [0.0] * len(slots.names))
    # diffusers turns only the first adapter's scales into tensors (enable_lora_hotswap
    # acts once, after the first load); the other slots' scales are floats that would be
    # compiled in as constants.
    prepare_model_for_compiled_hotswap(transformer, target_rank=slots.max_rank,
                                       config=transformer.peft_config,
                                       check_compiled=check_compiled)  # type: ignore[arg-type]


def _unit_scales(pipeline: Any, slot: str) -> list[tuple[Any, float]]:
    """Each LoRA layer of ``slot`` with its scale now (after a swap: the adapter's
    alpha / rank, its scale at weight 1)."""
    from peft.tuners.lora import LoraLayer

    return [(module, float(module.scaling[slot])) for module in pipeline.transformer.modules()
            if isinstance(module, LoraLayer) and slot in module.scaling]
