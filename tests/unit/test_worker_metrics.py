"""Worker metrics as the job hooks update them (no server, no Prometheus)."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from common.errors import InputImageError
from common.job import JobKind, ModelType, new_job
from common.status import JobRecord, JobStatus
from worker.caches import LRUCache
from worker.execute import CurrentJob
from worker.hooks import JobOutcome
from worker.metrics import WorkerMetrics


def sample(metrics: WorkerMetrics, name: str, labels: dict[str, str]) -> float | None:
    value = metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def record(**fields: object) -> JobRecord:
    spec = new_job(JobKind.GENERATE, prompt="p", width=32, height=32)
    now = time.time()
    return JobRecord(spec=spec, status=JobStatus.RUNNING, root_id=spec.job_id, turn=0,
                     created_at=now - 3, queued_at=now - 2, started_at=now - 1, **fields)


def test_series_exist_at_zero_before_any_job() -> None:
    metrics = WorkerMetrics(ModelType.TURBO)
    labels = {"model": "turbo", "kind": "edit", "status": "failed"}
    assert sample(metrics, "zq_jobs_total", labels) == 0.0
    assert sample(metrics, "zq_job_phase_seconds_count",
                  {"model": "turbo", "phase": "denoise"}) == 0.0
    assert sample(metrics, "zq_worker_ready", {"model": "turbo"}) == 0.0


def test_hooks_count_jobs_phases_failures_and_steps() -> None:
    metrics = WorkerMetrics(ModelType.TURBO)
    job = record()
    metrics.started(job)
    for step in range(1, 5):
        metrics.progressed(job.spec, step, 4)
    metrics.finished(JobOutcome(job, JobStatus.SUCCEEDED,
                                {"denoise": 0.5, "upload": 0.1, "not_a_phase": 9.0},
                                steps_run=4))
    metrics.finished(JobOutcome(job, JobStatus.FAILED, error=InputImageError("gone")))
    turbo = {"model": "turbo"}
    assert sample(metrics, "zq_jobs_total",
                  {**turbo, "kind": "generate", "status": "succeeded"}) == 1.0
    assert sample(metrics, "zq_job_failures_total", {**turbo, "code": "input_invalid"}) == 1.0
    assert sample(metrics, "zq_job_phase_seconds_sum", {**turbo, "phase": "denoise"}) == 0.5
    wait = sample(metrics, "zq_job_phase_seconds_sum", {**turbo, "phase": "queue_wait"})
    assert wait is not None and 0.9 < wait < 1.1
    assert sample(metrics, "zq_denoise_steps_total", turbo) == 4.0
    assert sample(metrics, "zq_denoise_steps_per_second", turbo) == 8.0
    assert b"not_a_phase" not in generate_latest(metrics.registry)


def test_scrape_time_values_follow_the_running_job_and_caches() -> None:
    metrics = WorkerMetrics(ModelType.EDIT)
    current = CurrentJob()
    cache: LRUCache[object, object] = LRUCache(4)
    cache.get_or_make("a", lambda: 1)
    cache.get_or_make("a", lambda: 1)
    metrics.watch(current, {"prompt_embeds": cache}, lambda: {"cuda:0": (10, 20, 100)})
    edit = {"model": "edit"}
    assert sample(metrics, "zq_job_in_progress_age_seconds", edit) == 0.0
    current.set("job-1")
    current.started -= 5
    age = sample(metrics, "zq_job_in_progress_age_seconds", edit)
    assert age is not None and age >= 5
    hits = {**edit, "cache": "prompt_embeds", "result": "hit"}
    assert sample(metrics, "zq_cache_requests_total", hits) == 1.0
    assert sample(metrics, "zq_gpu_memory_reserved_bytes", {**edit, "device": "cuda:0"}) == 20
