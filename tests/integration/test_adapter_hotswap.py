"""LoRA hot-swap on a compiled transformer: adapters come and go, the graph stays compiled."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from common.adapter_registry import file_key
from common.adapters import Adapter
from common.job import JobKind, ModelType, new_job
from common.storage import LocalStore
from worker.acceleration import ModelOptions
from worker.adapters import AdapterSet
from worker.boot import warm_up
from worker.models import load_model
from worker.render import Renderer
from worker.results import RenderInputs
from worker.tiny_lora import make_tiny_lora

pytestmark = pytest.mark.integration


def register(store: LocalStore, path: Path, name: str) -> Adapter:
    """The file in storage by checksum, as ``zq adapters add`` leaves it."""
    data = path.read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    store.put(file_key(sha256), data, "application/octet-stream")
    return Adapter(name, 1.0, sha256)


def render(renderer: Renderer, adapters: tuple[Adapter, ...] = ()) -> torch.Tensor:
    job = new_job(JobKind.GENERATE, prompt="a lantern", width=64, height=64, steps=2, seed=3,
                  adapters=adapters)
    return renderer.render(job, RenderInputs(), lambda done, total: False).latents


# As in test_serving_options: inductor's imports and its note on complex operators.
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex "
                            "operators:UserWarning")
def test_adapters_swap_into_a_compiled_transformer_without_recompiling(
        tiny_models: dict[str, Path], tmp_path: Path) -> None:
    turbo = tiny_models["turbo"]
    store = LocalStore(tmp_path / "store")
    acme, globex, initech = (
        register(store, make_tiny_lora(turbo, tmp_path / f"{name}.safetensors", seed, rank), name)
        for name, seed, rank in (("acme", 1, 2), ("globex", 2, 2), ("initech", 3, 4)))
    options = ModelOptions(device="cpu", dtype="bfloat16", compile=True,
                           attention_backend="_native_math", adapter_slots=2, adapter_max_rank=4)
    loaded = load_model(ModelType.TURBO, str(turbo), options)
    adapters = AdapterSet(loaded.pipeline, store, tmp_path / "cache", 0)
    assert adapters.hotswap is not None and adapters.hotswap.names == ("slot0", "slot1")
    compiled = Renderer(loaded, adapters=adapters)
    warm_up(compiled, ((64, 64),))  # compiles the blocks, slots included, for this shape

    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        plain = render(compiled)
        with_acme = render(compiled, (acme,))
        with_globex = render(compiled, (globex,))
        acme_again = render(compiled, (acme,))
        plain_after = render(compiled)
        with_initech = render(compiled, (initech,))  # into globex's slot, the least recent
    assert counters["stats"]["unique_graphs"] == graphs  # nothing was compiled again
    assert adapters.slots == {"slot0": acme.sha256, "slot1": initech.sha256}
    assert (adapters.stats.loads, adapters.stats.hits, adapters.stats.evictions) == (3, 1, 1)

    assert not torch.equal(with_acme, plain) and not torch.equal(with_globex, with_acme)
    assert torch.equal(acme_again, with_acme)
    assert torch.equal(plain_after, plain)  # no adapter lingers in a plain job

    eager_model = load_model(ModelType.TURBO, str(turbo),
                             ModelOptions(device="cpu", dtype="bfloat16",
                                          attention_backend="_native_math"))
    eager = Renderer(eager_model, adapters=AdapterSet(eager_model.pipeline, store,
                                                      tmp_path / "eager-cache", 1 << 20))
    initech_eager = render(eager, (initech,))
    # Fused kernels round differently in bf16 (as test_serving_options allows); the adapter's
    # own effect is far larger, so a slot that held another adapter's weights would show.
    assert torch.allclose(with_initech, initech_eager, atol=0.1)
    assert not torch.allclose(plain, initech_eager, atol=0.1)
