"""The weight-footprint guard, on small torch modules (no diffusers pipeline needed)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from common.errors import WorkerBroken
from worker.model_state import ModelStateGuard


@dataclass
class FakePipeline:
    """Stands in for a diffusers pipeline: ``components`` maps names to modules and others."""

    components: dict[str, object] = field(default_factory=dict)


def pipeline(dtype: torch.dtype = torch.bfloat16) -> FakePipeline:
    torch.manual_seed(0)
    transformer = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32)).to(dtype)
    norm = torch.nn.BatchNorm1d(4).to(dtype)  # has buffers too
    return FakePipeline({"transformer": transformer, "vae": norm, "tokenizer": "not a module",
                         "scheduler": None})


def test_unchanged_weights_pass_and_bytes_are_reported() -> None:
    pipe = pipeline()
    guard = ModelStateGuard(pipe)
    with torch.no_grad():
        pipe.components["transformer"][0].weight.add_(1.0)  # values may change, shapes not
    guard.check("a job")
    sizes = guard.parameter_bytes()
    assert set(sizes) == {"transformer", "vae"}
    assert sizes["transformer"] == {"bfloat16": (16 * 32 + 32 + 32 + 32) * 2}
    # BatchNorm: weight, bias, running mean/var in bf16, the batch counter in int64.
    assert sizes["vae"] == {"bfloat16": 4 * 4 * 2, "int64": 8}


@pytest.mark.parametrize("change", ["upcast", "move", "replace", "drop", "add"])
def test_any_change_of_dtype_device_or_component_is_caught(change: str) -> None:
    pipe = pipeline()
    guard = ModelStateGuard(pipe)
    if change == "upcast":
        pipe.components["transformer"].to(torch.float32)  # type: ignore[union-attr]
        expected = "transformer: bfloat16 1.2 KB on cpu -> float32 2.4 KB on cpu"
    elif change == "move":
        pipe.components["vae"].to("meta")  # type: ignore[union-attr]
        expected = "on cpu -> bfloat16 32 B, int64 8 B on meta"
    elif change == "replace":
        pipe.components["transformer"] = torch.nn.Linear(16, 32).to(torch.bfloat16)
        expected = "transformer: bfloat16 1.2 KB on cpu -> bfloat16 1.1 KB on cpu"
    elif change == "drop":
        del pipe.components["vae"]
        expected = "vae: bfloat16 32 B, int64 8 B on cpu -> absent"
    else:
        pipe.components["extra"] = torch.nn.Linear(2, 2)
        expected = "extra: absent -> float32 24 B on cpu"
    with pytest.raises(WorkerBroken) as raised:
        guard.check("an edit job")
    assert str(raised.value).startswith("the loaded model changed during an edit job: ")
    assert expected in str(raised.value)
