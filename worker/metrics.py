"""Prometheus metrics of one worker process, served over HTTP on its own port.

Names follow Prometheus conventions (``zq_..._total``, base units); labels are low
cardinality: model type, job kind, status, phase, cache name. Never a job id or prompt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.deadletters import REASONS
from common.errors import UnsafeContent
from common.job import JobKind, JobSpec, ModelType
from common.status import TERMINAL, JobRecord
from worker.execute import CurrentJob
from worker.hooks import JobOutcome
from worker.lru import LRUCache
from worker.safety import STAGES

if TYPE_CHECKING:  # worker.adapters needs torch; the Flower image imports these metrics
    from worker.adapters import AdapterSet

# From a 16 px tiny-model step (~5 ms) to a 2048 px base-model job (many minutes).
PHASE_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0, 1800.0, 3600.0)
# handoff_wait: how long a rendered job waited for the finisher thread; if it grows, storage
# (not the GPU) is the bottleneck.
# safety_prompt / safety_image: the safety gate's checks (only when a gate is on).
PHASES = ("queue_wait", "safety_prompt", "load_inputs", "text_encode", "denoise", "vae_decode",
          "handoff_wait", "safety_image", "image_encode", "upload")


class WorkerMetrics:
    """The metrics a worker exports; also the job hook that updates them."""

    def __init__(self, model: ModelType, registry: CollectorRegistry | None = None) -> None:
        self.model = model.value
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter("zq_jobs", "Jobs that ended on this worker",
                            ["model", "kind", "status"], registry=r)
        self.failures = Counter("zq_job_failures", "Failed jobs by reason code",
                                ["model", "code"], registry=r)
        self.phase = Histogram("zq_job_phase_seconds", "Time a job spent in each phase",
                               ["model", "phase"], buckets=PHASE_BUCKETS_S, registry=r)
        self.duration = Histogram("zq_job_duration_seconds",
                                  "Time from claim to end of a job on the worker",
                                  ["model", "kind"], buckets=PHASE_BUCKETS_S, registry=r)
        self.steps = Counter("zq_denoise_steps", "Denoising steps run", ["model"], registry=r)
        self.steps_rate = Gauge("zq_denoise_steps_per_second",
                                "Denoising speed of the last finished job", ["model"],
                                registry=r)
        self.load = Gauge("zq_model_load_seconds", "Seconds the model took to load",
                          ["model"], registry=r)
        self.warmup = Gauge("zq_model_warmup_seconds", "Seconds the warm-up render took",
                            ["model"], registry=r)
        self.ready = Gauge("zq_worker_ready", "1 once the weights are loaded and warm",
                           ["model"], registry=r)
        self.ready.labels(self.model).set(0)
        self.dead_letters = Counter("zq_dead_letters",
                                    "Broker messages this worker moved to the dead-letter list",
                                    ["model", "reason"], registry=r)
        for reason in REASONS:
            self.dead_letters.labels(self.model, reason)
        self.safety_blocked = Counter("zq_safety_blocked", "Jobs the safety gate blocked",
                                      ["model", "stage"], registry=r)
        for stage in STAGES:
            self.safety_blocked.labels(self.model, stage)
        self.adapter_passes = Counter(
            "zq_adapter_passes", "Adapter jobs passed to a worker holding their adapters "
            "(sent), and those put back on the shared queue untaken (returned)",
            ["model", "way"], registry=r)
        for way in ("sent", "returned"):
            self.adapter_passes.labels(self.model, way)
        # Series that exist from the start: rate() cannot see a job counted before
        # Prometheus first scraped its series.
        for kind in JobKind:
            self.duration.labels(self.model, kind.value)
            for status in TERMINAL:
                self.jobs.labels(self.model, kind.value, status.value)
        for phase in PHASES:
            self.phase.labels(self.model, phase)
        self.steps.labels(self.model)

    def watch(self, current: CurrentJob, caches: dict[str, LRUCache[object, object]],
              gpu_memory: Callable[[], dict[str, tuple[int, int, int]]]) -> None:
        """Add the values read at scrape time: job age, cache counts, GPU memory."""
        self.registry.register(_ScrapeTimeCollector(self.model, current, caches, gpu_memory))

    def watch_adapters(self, adapters: AdapterSet) -> None:
        """Add the LoRA adapter counts, read at scrape time: loads, hits, resident bytes."""
        self.registry.register(_AdapterCollector(self.model, adapters))

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``address:port`` from a background thread; returns the port.

        Port 0 lets the OS choose one; the bound port is returned.
        """
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        return int(server.server_port)

    def dead_lettered(self, reason: str) -> None:
        """Count a message moved to the dead-letter list."""
        self.dead_letters.labels(self.model, reason).inc()

    def count_pass(self, way: str) -> None:
        """Count an adapter job passed to a warm worker (``sent``) or put back (``returned``)."""
        self.adapter_passes.labels(self.model, way).inc()

    # -- job hooks --------------------------------------------------------------
    def started(self, record: JobRecord) -> None:
        """Observe how long the job waited in the queue."""
        if record.queued_at is not None and record.started_at is not None:
            wait = max(record.started_at - record.queued_at, 0.0)
            self.phase.labels(self.model, "queue_wait").observe(wait)

    def progressed(self, spec: JobSpec, done: int, total: int) -> None:
        """Count a denoising step."""
        self.steps.labels(self.model).inc()

    def finished(self, outcome: JobOutcome) -> None:
        """Count the job, observe its phases and total duration."""
        spec = outcome.record.spec
        self.jobs.labels(self.model, spec.kind.value, outcome.status.value).inc()
        if outcome.error is not None and outcome.status.value == "failed":
            self.failures.labels(self.model, outcome.error.code).inc()
        if isinstance(outcome.error, UnsafeContent):
            self.safety_blocked.labels(self.model, outcome.error.stage).inc()
        for phase, seconds in outcome.timings_s.items():
            if phase in PHASES:
                self.phase.labels(self.model, phase).observe(seconds)
        started = outcome.record.started_at
        if started is not None:
            self.duration.labels(self.model, spec.kind.value).observe(
                max(time.time() - started, 0.0))
        denoise = outcome.timings_s.get("denoise")
        if denoise and outcome.steps_run:
            self.steps_rate.labels(self.model).set(outcome.steps_run / denoise)


class _AdapterCollector(Collector):
    """The adapter set's own counts (``worker.adapters.AdapterStats``) as metrics."""

    def __init__(self, model: str, adapters: AdapterSet) -> None:
        self.model = model
        self.adapters = adapters

    def collect(self) -> Iterator[Metric]:
        stats = self.adapters.stats
        for name, text, value in (
                ("zq_adapter_loads", "LoRA adapter files loaded (a miss)", stats.loads),
                ("zq_adapter_hits", "Jobs' adapters found already loaded", stats.hits),
                ("zq_adapter_evictions", "Adapters unloaded to stay within the budget",
                 stats.evictions),
                ("zq_adapter_load_seconds", "Seconds spent loading adapters",
                 stats.load_seconds)):
            family = CounterMetricFamily(name, text, labels=["model"])
            family.add_metric([self.model], value)
            yield family
        resident = GaugeMetricFamily("zq_adapter_resident_bytes",
                                     "Bytes of LoRA adapters loaded now", labels=["model"])
        resident.add_metric([self.model], self.adapters.resident_bytes)
        yield resident
        count = GaugeMetricFamily("zq_adapters_resident", "LoRA adapters loaded now",
                                  labels=["model"])
        count.add_metric([self.model], len(self.adapters.resident))
        yield count


class _ScrapeTimeCollector(Collector):
    """Values that are cheapest to read when Prometheus asks for them."""

    def __init__(self, model: str, current: CurrentJob,
                 caches: dict[str, LRUCache[object, object]],
                 gpu_memory: Callable[[], dict[str, tuple[int, int, int]]]) -> None:
        self.model = model
        self.current = current
        self.caches = caches
        self.gpu_memory = gpu_memory

    def collect(self) -> Iterator[Metric]:
        age = GaugeMetricFamily("zq_job_in_progress_age_seconds",
                                "Age of the job running now (0 when idle)", labels=["model"])
        with self.current.lock:
            running, since = self.current.job_id, self.current.started
        age.add_metric([self.model], time.time() - since if running else 0.0)
        yield age
        requests = CounterMetricFamily("zq_cache_requests", "Cache lookups by result",
                                       labels=["model", "cache", "result"])
        for name, cache in self.caches.items():
            requests.add_metric([self.model, name, "hit"], cache.hits)
            requests.add_metric([self.model, name, "miss"], cache.misses)
        yield requests
        allocated = GaugeMetricFamily("zq_gpu_memory_allocated_bytes",
                                      "GPU memory held by tensors", labels=["model", "device"])
        reserved = GaugeMetricFamily("zq_gpu_memory_reserved_bytes",
                                     "GPU memory reserved by the caching allocator",
                                     labels=["model", "device"])
        total = GaugeMetricFamily("zq_gpu_memory_total_bytes", "GPU memory on the device",
                                  labels=["model", "device"])
        for device, (used, held, size) in self.gpu_memory().items():
            allocated.add_metric([self.model, device], used)
            reserved.add_metric([self.model, device], held)
            total.add_metric([self.model, device], size)
        yield allocated
        yield reserved
        yield total


def gpu_memory_of(device: object) -> Callable[[], dict[str, tuple[int, int, int]]]:
    """A reader of (allocated, reserved, total) bytes for the worker's own CUDA device.

    Only the device the worker renders on: several workers share a node's GPUs.
    """
    import torch

    def read() -> dict[str, tuple[int, int, int]]:
        if not isinstance(device, torch.device) or device.type != "cuda":
            return {}
        index = device.index if device.index is not None else torch.cuda.current_device()
        total = torch.cuda.get_device_properties(index).total_memory
        return {f"cuda:{index}": (torch.cuda.memory_allocated(index),
                                  torch.cuda.memory_reserved(index), total)}

    return read
