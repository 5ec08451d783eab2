"""Starting a worker process: load the model once, warm it up, start the liveness thread."""

from __future__ import annotations

import logging
import re
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from celery import Celery

from common.audit import configure_audit_logging
from common.deadletters import DeadLetterStore
from common.errors import ConfigError, WorkerBroken
from common.job import JobKind, ModelType, new_job
from common.jobstore import JobStore
from common.queueing import TASK_NAMES, publish
from common.settings import Settings
from common.storage import open_store
from common.webhooks import redact_url
from worker.acceleration import ModelOptions
from worker.acceleration import describe as describe_options
from worker.adapters import AdapterSet
from worker.audit import AuditHooks
from worker.execute import CurrentJob, JobRunner
from worker.health import health_path
from worker.hooks import HookSet
from worker.intake import Intake
from worker.liveness import Liveness, WorkerRegistry
from worker.metrics import WorkerMetrics, gpu_memory_of
from worker.models import load_model
from worker.ports import bind_first_free
from worker.render import Renderer
from worker.results import RenderInputs
from worker.safety import load_guard
from worker.warm_routing import WarmRouting

if TYPE_CHECKING:
    from worker.celery_app import WorkerRuntime

log = logging.getLogger("zq.worker")

WARM_UP_PROMPTS = ("warm-up", "a detailed studio photograph of a product on a marble table, "
                   "soft window light from the left, shallow depth of field, neutral background, "
                   "high dynamic range, sharp focus on the label, commercial catalogue style")


class ModelRenderer(Renderer):
    """The real renderer, describing its model for manifests."""

    def describe(self) -> dict[str, object]:
        """The model section of a manifest."""
        return {**self.model.describe(), "versions": self.model.versions}


def adapter_dir(settings: Settings, worker_id: str) -> Path:
    """Where this worker keeps adapter files: ``ZQ_ADAPTER_DIR``, else its own temp folder
    (several workers on one host must not share half-written files)."""
    if settings.adapter_dir:
        return Path(settings.adapter_dir)
    return Path(tempfile.gettempdir()) / ("zq-adapters-" + re.sub(r"[^A-Za-z0-9_.-]", "_",
                                                                  worker_id))


def warm_up(renderer: Renderer, sizes_px: tuple[tuple[int, int], ...] = ((64, 64),)) -> float:
    """One render per size so the first real job pays no first-call costs; returns seconds.

    Warming up at the sizes most jobs use warms shape-specific kernels and, with
    ``ZQ_COMPILE``, compiles the transformer for each of them.
    """
    multiple = renderer.model.size_multiple
    # A compiled transformer is specialised to the first shapes it sees and recompiled for
    # new ones; a second, longer prompt makes the caption length dynamic here, at start-up,
    # instead of during the first real job.
    prompts = [WARM_UP_PROMPTS[0]] if not renderer.model.options.compile else WARM_UP_PROMPTS
    started = time.perf_counter()
    for width, height in sizes_px:
        width, height = (max(side - side % multiple, multiple) for side in (width, height))
        for prompt in prompts:
            job = new_job(JobKind.GENERATE, prompt=prompt, seed=0, steps=2, width=width,
                          height=height, model=ModelType.TURBO.value)
            renderer.render(job, RenderInputs(), lambda done, total: False)
    return time.perf_counter() - started


def start_runtime(settings: Settings, model: ModelType, worker_id: str,
                  app: Celery) -> WorkerRuntime:
    """Everything a worker needs before it consumes its first message."""
    from worker.celery_app import WorkerRuntime

    configure_audit_logging()
    if settings.redis_shards and settings.redis_url not in settings.redis_shards:
        # A worker serves its ZQ_REDIS_URL only; producers route to the listed shards.
        log.warning("ZQ_REDIS_URL %s is not one of ZQ_REDIS_SHARDS: no producer with that "
                    "list routes jobs to this worker", redact_url(settings.redis_url))
    metrics = WorkerMetrics(model)
    address = settings.metrics_addr
    port = bind_first_free(lambda candidate: metrics.serve(candidate, address), address,
                           settings.metrics_port, settings.exporter_port)
    log.info("metrics at http://%s:%d/metrics", address, port)
    jobs = JobStore.from_url(settings.redis_url, settings.key_prefix, settings.record_ttl_s)
    registry = WorkerRegistry(jobs, worker_id, model, ttl_s=settings.lease_ttl_s * 2)
    registry.update(metrics_addr=address, metrics_port=port)
    letters = DeadLetterStore(jobs.redis, settings.key_prefix, settings.dead_letter_max)
    current = CurrentJob()
    # Beat (and write the health file, not ready) while the weights load: a probe must
    # see a loading worker as alive, or Kubernetes restarts it mid-load.
    liveness = Liveness(jobs, app, model, worker_id, current, registry, settings.lease_ttl_s,
                        health_path(model), settings.max_wait_s, settings.stall_timeout_s)
    liveness.start()
    source = settings.model_sources[model]
    log.info("loading %s model from %s", model.value, source)
    options = ModelOptions.from_settings(settings)
    loaded = load_model(model, source, options)
    registry.count("model_loads")
    store = open_store(settings)
    adapters = AdapterSet(loaded.pipeline, store, adapter_dir(settings, worker_id),
                          settings.adapter_cache_mb * 1024 * 1024)
    renderer = ModelRenderer(loaded, settings.prompt_cache_size, settings.latent_cache_size,
                             adapters)
    metrics.watch_adapters(adapters)
    routing = WarmRouting(jobs, model, worker_id, adapters, app, settings.adapter_pass_s,
                          metrics.count_pass)
    intake = Intake(jobs, letters, worker_id, TASK_NAMES.values(), metrics.dead_lettered,
                    model, lambda spec: publish(app, spec), routing)
    try:
        warm_s = warm_up(renderer, settings.warmup_sizes_px)
    except WorkerBroken:
        raise
    except Exception as exc:
        raise ConfigError(f"the warm-up render failed with {describe_options(options)}: "
                          f"{type(exc).__name__}: {exc}") from exc
    metrics.load.labels(model.value).set(loaded.load_seconds)
    metrics.warmup.labels(model.value).set(warm_s)
    registry.update(load_seconds=loaded.load_seconds, warmup_seconds=warm_s,
                    revision=loaded.source.revision, device=str(loaded.device))
    log.info("model %s loaded in %.2fs, warm-up %.2fs", loaded.source.revision,
             loaded.load_seconds, warm_s)
    # Loaded once, on the worker's device, and tried once: a bad gate stops the boot (78).
    safety = load_guard(settings, str(loaded.device))
    log.info("safety gate: %s", safety.name if safety else "off")
    hooks = HookSet([metrics, AuditHooks(worker_id, source, loaded.source.revision), registry])
    runner = JobRunner(settings, worker_id, jobs, store, app, renderer, hooks,
                       current, model, safety)
    caches = {"prompt_embeds": renderer.prompt_cache, "latent_template": renderer.latent_cache}
    metrics.watch(current, caches, gpu_memory_of(loaded.device))  # type: ignore[arg-type]
    liveness.routing = routing
    return WorkerRuntime(model, runner, registry, liveness, metrics, intake, routing)
