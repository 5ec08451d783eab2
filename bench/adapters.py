"""LoRA adapters on a worker: what a job pays when its adapter is resident, and when not.

One tiny turbo checkpoint and two tiny LoRA adapters (``worker.tiny_lora``, the real
file format) are built offline; the worker's own ``AdapterSet`` loads them from a local
object store, on the worker's own ``Renderer``. Three scenarios of N generate jobs each,
alternating two brands:

* ``plain``: no adapter (the baseline),
* ``resident``: the budget holds both adapters, so after the first two jobs every job
  finds its adapter loaded (``set_adapters`` only),
* ``switch``: the budget holds one, so every job unloads the other brand and loads its
  own from disk (``delete_adapters`` + ``load_lora_weights``).

Then the same two on a compiled bf16 transformer (``ZQ_COMPILE``), where adapters are
hot-swapped into slots compiled in at start: ``compiled resident`` (two slots) and
``compiled switch`` (one slot, so every job swaps the other brand out), each also counting
the graphs Torch compiled after the warm-up (0: no job recompiled anything).

Reported per scenario: mean and median render time per job, adapter loads and hits, and
the ratio of a switching job to a resident one. Run: ``python bench/adapters.py -n 40``.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import torch
from _shared import mean_ms, median_ms, table, tiny_render_args, write_section
from torch._dynamo.utils import counters

from common.adapter_registry import file_key
from common.adapters import Adapter
from common.job import JobKind, ModelType, new_job
from common.storage import LocalStore
from worker.acceleration import ModelOptions
from worker.adapters import AdapterSet
from worker.boot import warm_up
from worker.models import LoadedModel, load_model
from worker.render import Renderer
from worker.results import RenderInputs
from worker.tiny_lora import make_tiny_lora
from worker.tiny_models import TINY_MODEL_SEEDS, make_tiny_checkpoint


def brands(store: LocalStore, checkpoint: Path, folder: Path) -> list[Adapter]:
    """Two tiny adapters stored by checksum, as ``zq adapters add`` stores them."""
    pinned = []
    for seed, name in ((1, "acme"), (2, "globex")):
        data = make_tiny_lora(checkpoint, folder / f"{name}.safetensors", seed).read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        store.put(file_key(sha256), data, "application/octet-stream")
        pinned.append(Adapter(name, 1.0, sha256))
    return pinned


def run_scenario(model: LoadedModel, store: LocalStore, cache: Path, name: str,
                 pinned: list[Adapter], file_bytes: int, args: argparse.Namespace
                 ) -> list[object]:
    """Render one scenario with a fresh adapter set; returns its table row.

    ``file_bytes``: one adapter's size, so the ``switch`` budget holds exactly one (a
    compiled model's slots, fixed at load, decide that instead).
    """
    budget = {"switch": file_bytes, "resident": 10 * file_bytes, "plain": 0}.get(name, 0)
    adapters = AdapterSet(model.pipeline, store, cache / name, budget)
    renderer = Renderer(model, adapters=adapters)
    graphs = counters["stats"]["unique_graphs"]
    times: list[float] = []
    for i in range(args.jobs):
        chosen = () if name == "plain" else (pinned[i % 2],)
        job = new_job(JobKind.GENERATE, prompt="a storefront at night", seed=7, steps=args.steps,
                      width=args.size, height=args.size, model="turbo", adapters=chosen)
        started = time.perf_counter()
        renderer.render(job, RenderInputs(), lambda done, total: False)
        times.append(time.perf_counter() - started)
    compiled = counters["stats"]["unique_graphs"] - graphs
    adapters.apply(())
    if adapters.hotswap is None:
        for resident in list(adapters.resident):  # leave the shared model clean
            model.pipeline.delete_adapters([resident])
    steady = times[2:]  # both brands seen once
    return [name, args.jobs, adapters.stats.loads, adapters.stats.hits,
            adapters.stats.evictions, compiled if model.options.compile else "-",
            mean_ms(steady), median_ms(steady)]


def compiled_model(checkpoint: Path, slots: int) -> LoadedModel:
    """The tiny turbo model in bf16, compiled with ``slots`` adapter slots, warmed up."""
    model = load_model(ModelType.TURBO, str(checkpoint),
                       ModelOptions(device="cpu", dtype="bfloat16", compile=True,
                                    attention_backend="_native_math", adapter_slots=slots,
                                    adapter_max_rank=4))
    warm_up(Renderer(model))
    return model


def main() -> None:
    """Run the three scenarios and write the ``adapters`` section of RESULTS.md."""
    args = tiny_render_args(__doc__.splitlines()[0], jobs=40)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="zq-bench-") as tmp:
        folder = Path(tmp)
        checkpoint = make_tiny_checkpoint(folder / "turbo", TINY_MODEL_SEEDS["turbo"])
        model = load_model(ModelType.TURBO, str(checkpoint), ModelOptions(device="cpu"))
        store = LocalStore(folder / "store")
        pinned = brands(store, checkpoint, folder / "files")
        size = (folder / "files" / "acme.safetensors").stat().st_size
        warm_up(Renderer(model))
        rows = [run_scenario(model, store, folder / "cache", name, pinned, size, args)
                for name in ("plain", "resident", "switch")]
        for name, slots in (("compiled resident", 2), ("compiled switch", 1)):
            rows.append(run_scenario(compiled_model(checkpoint, slots), store,
                                     folder / "cache", name, pinned, size, args))
    plain, resident, switch, hot_resident, hot_switch = (float(str(row[6])) for row in rows)
    recompiled = sum(int(str(row[5])) for row in rows[3:])
    ratio = (f"A job whose adapter must be loaded (switch) takes {switch / resident:.2f}x the "
             f"time of one whose adapter is resident ({switch:.1f} ms against {resident:.1f} "
             f"ms, means after the first two jobs); a resident adapter costs "
             f"{resident / plain:.2f}x a plain job. Compiled, a hot-swap into a slot takes "
             f"{hot_switch / hot_resident:.2f}x a resident adapter ({hot_switch:.1f} ms against "
             f"{hot_resident:.1f} ms); jobs compiled {recompiled} graphs after the warm-up.")
    headers = ["scenario", "jobs", "adapter loads", "hits", "evictions",
               "graphs compiled", "render ms/job (mean, after 2)", "(median)"]
    body = (f"{args.jobs} generate jobs per scenario alternating two brands, {args.size}x"
            f"{args.size}, {args.steps} steps, tiny turbo checkpoint, two tiny LoRA adapters "
            f"(rank 2 on attention q/k/v/out, {size} bytes each), torch threads "
            f"{args.threads}, the worker's own AdapterSet and Renderer; the compiled rows in "
            "bf16 with adapter slots of rank 4 (two, or one for the switch).\n\n"
            f"{table(headers, rows)}\n\n{ratio}\n\n"
            "Caveat: tiny adapters load in milliseconds from a local disk; a real brand LoRA "
            "(tens to hundreds of MB, fetched from S3 on a first use) costs far more per "
            "switch, which is what keeping adapters resident saves. Not measured on a GPU.")
    write_section("adapters", "adapters (LoRA switch vs resident)", body)


if __name__ == "__main__":
    main()
