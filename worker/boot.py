"""Starting a worker process: load the model once, warm it up, start the liveness thread."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from celery import Celery
from diffusers.utils import logging as diffusers_logging

from common.audit import configure_audit_logging
from common.job import JobKind, ModelType, new_job
from common.jobstore import JobStore
from common.settings import Settings
from common.storage import open_store
from worker.audit import AuditHooks
from worker.execute import CurrentJob, JobRunner
from worker.health import health_path
from worker.hooks import HookSet
from worker.liveness import Liveness, WorkerRegistry
from worker.metrics import WorkerMetrics, gpu_memory_of
from worker.models import load_model
from worker.render import Renderer
from worker.results import RenderInputs

if TYPE_CHECKING:
    from worker.celery_app import WorkerRuntime

log = logging.getLogger("zq.worker")


class ModelRenderer(Renderer):
    """The real renderer, describing its model for manifests."""

    def describe(self) -> dict[str, object]:
        """The model section of a manifest."""
        return {**self.model.describe(), "versions": self.model.versions}


def warm_up(renderer: Renderer, side_px: int) -> float:
    """One render so the first real job pays no first-call costs; returns seconds.

    Warming up at the size most jobs use also warms shape-specific kernels.
    """
    multiple = renderer.model.size_multiple
    side = max(side_px - side_px % multiple, multiple)
    job = new_job(JobKind.GENERATE, prompt="warm-up", seed=0, steps=2, width=side, height=side,
                  model=ModelType.TURBO.value)
    started = time.perf_counter()
    renderer.render(job, RenderInputs(), lambda done, total: False)
    return time.perf_counter() - started


def start_runtime(settings: Settings, model: ModelType, worker_id: str,
                  app: Celery) -> WorkerRuntime:
    """Everything a worker needs before it consumes its first message."""
    from worker.celery_app import WorkerRuntime

    # diffusers warns on every from_pipe about float32 modules it does not have.
    diffusers_logging.set_verbosity_error()
    configure_audit_logging()
    metrics = WorkerMetrics(model)
    if settings.metrics_port:
        metrics.serve(settings.metrics_port)
    jobs = JobStore.from_url(settings.redis_url, settings.key_prefix)
    registry = WorkerRegistry(jobs, worker_id, model, ttl_s=settings.lease_ttl_s * 2)
    current = CurrentJob()
    # Beat (and write the health file, not ready) while the weights load: a probe must
    # see a loading worker as alive, or Kubernetes restarts it mid-load.
    liveness = Liveness(jobs, app, model, worker_id, current, registry, settings.lease_ttl_s,
                        health_path(model), settings.max_wait_s)
    liveness.start()
    source = settings.model_sources[model]
    log.info("loading %s model from %s", model.value, source)
    loaded = load_model(model, source, settings.device, settings.cpu_offload)
    registry.count("model_loads")
    renderer = ModelRenderer(loaded, settings.prompt_cache_size, settings.latent_cache_size)
    warm_s = warm_up(renderer, settings.warmup_size_px)
    metrics.load.labels(model.value).set(loaded.load_seconds)
    metrics.warmup.labels(model.value).set(warm_s)
    registry.update(load_seconds=loaded.load_seconds, warmup_seconds=warm_s,
                    revision=loaded.source.revision, device=str(loaded.device))
    log.info("model %s loaded in %.2fs, warm-up %.2fs", loaded.source.revision,
             loaded.load_seconds, warm_s)
    hooks = HookSet([metrics, AuditHooks(worker_id, source, loaded.source.revision)])
    runner = JobRunner(settings, worker_id, jobs, open_store(settings), app, renderer, hooks,
                       current)
    caches = {"prompt_embeds": renderer.prompt_cache, "latent_template": renderer.latent_cache}
    metrics.watch(current, caches, gpu_memory_of(loaded.device))  # type: ignore[arg-type]
    return WorkerRuntime(model, runner, registry, liveness, metrics)
