"""Autoscaling rehearsal: KEDA's scaling decisions replayed on what ``zq exporter`` serves.

A real ``zq exporter`` is scraped over HTTP every ``SAMPLE_S`` while a real Redis goes
through idle -> a batch of 300 edit jobs -> drain -> idle, the jobs running on two live
``zq worker --model edit`` processes. At each sample the scaler below decides how many edit
replicas KEDA would ask for, following KEDA's and the HPA's documented rules for a
``ScaledObject`` with a Prometheus trigger on ``zq_queue_load{model="edit"}``:

* Activation (KEDA): at 0 replicas, scale to 1 when the metric is above
  ``activationThreshold``; otherwise stay at 0.
* Scaling (HPA, ``metricType: AverageValue``): desired =
  ``ceil(currentReplicas * currentMetric / (targetValue * currentReplicas))``
  = ``ceil(metric / targetValue)``, unchanged while ``|metric / (targetValue * currentReplicas)
  - 1| <= 0.1`` (the HPA's tolerance), clamped to ``[max(1, minReplicaCount),
  maxReplicaCount]``; a scale-down takes the highest recommendation of the stabilization
  window (``behavior.scaleDown.stabilizationWindowSeconds``).
* Scale to zero (KEDA): only once the metric has been at or below the activation threshold
  for ``cooldownPeriod`` since it was last above it.

Here ``targetValue`` is 50 jobs per replica, min 0, max 4, activation 0, and the polling
interval, cooldown and stabilization window are counted in samples (0.2 s each instead of the
30 s / 300 s / 300 s of a real cluster). The rehearsal asserts that the desired replicas rise
with the load (activating from zero: KEDA has had a scale-from-zero bug on Redis), never read
zero while a job is waiting or running (per the job records), and return to zero after the
cooldown. The same scaler replayed on ``LLEN`` instead of the exported load shows why the
exporter exists: the running job's message has left the list for the ``unacked`` hash, and
jobs of other priorities sit in other lists, so LLEN-driven scaling (column ``on_llen``)
never even activates, and LLEN summed over every priority list (``on_lists``) scales to zero
under the batch's last, slow job.

A second rehearsal stops the exporter (twice) to replay what the chart's ``fallback``
(``failureThreshold: 3``, ``replicas: max(1, minReplicaCount)``, ``behavior:
currentReplicasIfHigher``) does when the query returns no series (``ignoreNullValues:
"false"`` makes that an error): for ``failureThreshold`` polls KEDA holds the current count,
then it holds the higher of the current count and the fallback replicas. Jobs submitted while
the exporter is gone and the type sits at zero wait for a worker: with the fallback it gets
one; without (column ``no_fb``, KEDA's default of keeping the current count) it stays at zero.

The decision tables are printed (``pytest -s``) and written to ``autoscaling.txt`` and
``fallback.txt`` in the test's tmp dir.
"""

from __future__ import annotations

import io
import math
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from common.job import ModelType
from common.queueing import queue_name
from common.queueload import priority_lists
from common.status import TERMINAL, JobStatus
from producer.client import Client
from tests.integration.cluster import Cluster
from zq.processes import free_port, stop

pytestmark = pytest.mark.integration

MODEL = ModelType.EDIT
JOBS = 300
CHUNK = 60  # jobs submitted between two samples while the batch arrives
SMALL: dict[str, Any] = {"width": 32, "height": 32, "steps": 2}
# The batch's last job is slower (a few seconds, longer than the cooldown), so the queue
# lists are empty for a while as it still runs.
SLOW: dict[str, Any] = {"width": 1024, "height": 1024, "steps": 60}
SAMPLE_S = 0.2
TARGET = 50  # jobs per replica (AverageValue)
MIN_REPLICAS, MAX_REPLICAS = 0, 4
ACTIVATION = 0
COOLDOWN_STEPS = 8
STABILIZATION_STEPS = 3
TOLERANCE = 0.1
IDLE_STEPS = 4
DEADLINE_S = 150
FAILURE_THRESHOLD = 3
FALLBACK_REPLICAS = max(1, MIN_REPLICAS)


@dataclass
class Scaler:
    """KEDA + HPA for one ScaledObject, one decision per polling interval."""

    replicas: int = 0
    last_active: int | None = None
    window: list[int] = field(default_factory=list)
    fallback: int | None = None  # fallback.replicas (behavior currentReplicasIfHigher)
    failures: int = 0
    target: float = TARGET

    def decide(self, step: int, metric: float | None) -> tuple[int, str]:
        """The replica count after this poll (``metric`` None: the query failed), and why."""
        if metric is None:
            self.failures += 1
            if self.fallback is None or self.failures <= FAILURE_THRESHOLD:
                return self.replicas, "no metric: hold"
            self.replicas, self.window = max(self.replicas, self.fallback), []
            return self.replicas, "fallback"
        self.failures = 0
        if metric > ACTIVATION:
            self.last_active = step
        if self.replicas == 0:
            if metric > ACTIVATION:
                self.replicas, self.window = max(1, MIN_REPLICAS), []
                return self.replicas, "activate 0->1"
            return 0, "idle"
        cooled = self.last_active is None or step - self.last_active >= COOLDOWN_STEPS
        if cooled and MIN_REPLICAS == 0:
            self.replicas, self.window = 0, []
            return 0, "cooldown over -> 0"
        ratio = metric / (self.target * self.replicas)
        if abs(ratio - 1) <= TOLERANCE:
            recommended = self.replicas
        else:
            recommended = math.ceil(self.replicas * ratio)  # = ceil(metric / TARGET)
        recommended = min(max(recommended, 1, MIN_REPLICAS), MAX_REPLICAS)
        self.window = [*self.window, recommended][-STABILIZATION_STEPS:]
        desired = recommended if recommended >= self.replicas else max(self.window)
        reason = ("hpa up" if desired > self.replicas else
                  "hpa down" if desired < self.replicas else
                  "cooling down" if metric <= ACTIVATION else "hpa hold")
        self.replicas = desired
        return desired, reason


@dataclass
class Sample:
    step: int
    t: float
    phase: str
    waiting: int
    reserved: int
    running: int
    load: int
    llen: int  # LLEN of the queue's own list only
    unfinished: int  # submitted jobs not yet succeeded/failed/cancelled, per their records
    replicas: int = 0
    reason: str = ""
    llen_replicas: int = 0
    lists_replicas: int = 0


@contextmanager
def exporter(cluster: Cluster, logs: Path) -> Iterator[str]:
    """``zq exporter`` for the cluster on a free port; yields its /metrics URL."""
    port = free_port()
    proc = start_exporter(cluster, logs, port)
    try:
        yield metrics_url(port)
    finally:
        stop(proc)


def metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def start_exporter(cluster: Cluster, logs: Path, port: int) -> subprocess.Popen[bytes]:
    """``zq exporter`` on ``port``, once it answers."""
    url = metrics_url(port)
    with (logs / "exporter.log").open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zq", "exporter", "--port", str(port),
                                 "--address", "127.0.0.1"],
                                env={**os.environ, **cluster.env}, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            scrape(url)
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                stop(proc)
                raise AssertionError((logs / "exporter.log").read_text()) from None
            time.sleep(0.1)


def scrape(url: str) -> dict[str, float]:
    """``{metric name: value}`` of the edit model's series on the exporter."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples if sample.labels.get("model") == MODEL.value}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 120, 40)).save(out, "PNG")
    return out.getvalue()


def unfinished(store: redis.Redis, prefix: str, job_ids: list[str]) -> int:
    pipe = store.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hget(f"{prefix}:job:{job_id}", "status")
    return sum(1 for status in pipe.execute()
               if status is None or JobStatus(status) not in TERMINAL)


def test_keda_replay_follows_the_exported_load(cluster: Cluster, client: Client,
                                               tmp_path: Path) -> None:
    store = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    workers = [cluster.start(MODEL, wait=False) for _ in range(2)]
    for worker in workers:
        cluster.wait_ready(worker)
    source = client.upload(png(), "source_image")
    job_ids: list[str] = []
    samples: list[Sample] = []
    scaler, llen_scaler, lists_scaler = Scaler(), Scaler(), Scaler()
    start = time.monotonic()
    table = tmp_path / "autoscaling.txt"
    with exporter(cluster, tmp_path) as url:
        try:
            step = 0
            quiet = 0  # samples since everything finished
            while quiet < COOLDOWN_STEPS + IDLE_STEPS:
                assert time.monotonic() - start < DEADLINE_S, render(samples)
                tick = time.monotonic()
                phase = "idle"
                if step >= IDLE_STEPS and len(job_ids) < JOBS:
                    phase = "batch"
                    for _ in range(min(CHUNK, JOBS - len(job_ids))):
                        slow = len(job_ids) == JOBS - 1
                        handle = client.edit(f"on marble {len(job_ids)}", image=source,
                                             seed=len(job_ids), **(SLOW if slow else SMALL))
                        job_ids.append(handle.job_id)
                metrics = scrape(url)
                llen = int(store.llen(queue_name(MODEL)))
                left = unfinished(store, cluster.prefix, job_ids)
                if phase == "idle" and job_ids:
                    phase = "drain" if left else "idle"
                quiet = quiet + 1 if job_ids and not left and phase == "idle" else 0
                sample = Sample(step, tick - start, phase, int(metrics["zq_queue_waiting"]),
                                int(metrics["zq_queue_reserved"]),
                                int(metrics["zq_queue_running"]),
                                int(metrics["zq_queue_load"]), llen, left)
                sample.replicas, sample.reason = scaler.decide(step, sample.load)
                sample.llen_replicas, _ = llen_scaler.decide(step, llen)
                sample.lists_replicas, _ = lists_scaler.decide(step, sample.waiting)
                samples.append(sample)
                step += 1
                time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - tick)))
        finally:
            table.write_text(render(samples))
            print(f"\n{render(samples)}\n(table written to {table})")
            for job_id in job_ids:
                client.cancel(job_id)
    check(samples)
    records = [client.status(job_id) for job_id in job_ids]
    assert all(r.status is JobStatus.SUCCEEDED for r in records), \
        {r.status for r in records}
    assert {r.worker for r in records} == {w.name for w in workers}, "both workers drained"


def check(samples: list[Sample]) -> None:
    report = render(samples)
    busy = [s for s in samples if s.load > 0 or s.unfinished > 0]
    assert busy, report
    first, last = samples.index(busy[0]), samples.index(busy[-1])
    peak = max(s.load for s in samples)
    # Idle: no load, no replicas (and the first idle samples come with ready workers).
    assert all(s.load == 0 and s.replicas == 0 for s in samples[:first]), report
    assert first >= IDLE_STEPS, report
    # Rises with the load: activates from zero at the first loaded sample, then follows
    # ceil(load / target) up to the maximum while the batch arrives.
    assert samples[first].replicas >= 1 and samples[first].reason.startswith("activate"), report
    # The batch must queue enough to ask for every replica; the workers drain it as it
    # arrives, so on a slow producer machine the peak stays below JOBS (194 of 300 seen).
    assert math.ceil(peak / TARGET) >= MAX_REPLICAS, \
        f"the batch never asked for {MAX_REPLICAS} replicas ({peak}):\n{report}"
    assert max(s.replicas for s in samples) == min(MAX_REPLICAS, math.ceil(peak / TARGET))
    rising = [s.replicas for s in samples[first:] if s.phase == "batch"]
    assert rising == sorted(rising), report
    for s in samples[first + 1:last + 1]:
        if s.load > TARGET * s.replicas * (1 + TOLERANCE):
            assert s.replicas == MAX_REPLICAS, f"under-provisioned at step {s.step}:\n{report}"
    # Never zero while a job is waiting or running.
    starved = [s.step for s in busy if s.replicas == 0]
    assert not starved, f"zero replicas with work at steps {starved}:\n{report}"
    # Back to zero after the cooldown, not before, and it stays there.
    zero_at = next(i for i in range(last + 1, len(samples)) if samples[i].replicas == 0)
    assert zero_at - last >= COOLDOWN_STEPS - 1, report
    assert all(s.replicas >= 1 for s in samples[last:zero_at]), report
    assert all(s.replicas == 0 for s in samples[zero_at:]), report
    # Trap 8: the lists were empty while a job still ran, and LLEN of the queue's own list
    # read 0 while jobs waited in a priority list, so LLEN-driven scaling starves the work.
    assert any(s.waiting == 0 and s.llen == 0 and s.running > 0 and s.load > 0
               for s in samples), report
    assert any(s.llen == 0 and s.load > 0 for s in samples), report
    assert [s.step for s in busy if s.llen_replicas == 0], report
    # Even LLEN summed over every priority list (trap 7 fixed, trap 8 not) scales the busy
    # worker away under the last, slow job once the cooldown runs out.
    assert [s.step for s in busy if s.lists_replicas == 0 and s.running > 0], report


def render(samples: list[Sample]) -> str:
    header = (f"{'step':>4} {'t_s':>6} {'phase':<6} {'wait':>4} {'resv':>4} {'run':>3} "
              f"{'load':>4} {'llen':>4} {'left':>4} {'repl':>4} {'on_llen':>7} {'on_lists':>8}  "
              "decision")
    rows = [f"{s.step:>4} {s.t:>6.2f} {s.phase:<6} {s.waiting:>4} {s.reserved:>4} "
            f"{s.running:>3} {s.load:>4} {s.llen:>4} {s.unfinished:>4} {s.replicas:>4} "
            f"{s.llen_replicas:>7} {s.lists_replicas:>8}  {s.reason}" for s in samples]
    legend = (f"KEDA replay: target {TARGET}/replica, replicas {MIN_REPLICAS}..{MAX_REPLICAS}, "
              f"activation {ACTIVATION}, cooldown {COOLDOWN_STEPS} samples, stabilization "
              f"{STABILIZATION_STEPS} samples, sample every {SAMPLE_S}s; lists of "
              f"{MODEL.value}: {len(priority_lists(MODEL))}")
    return "\n".join([legend, header, *rows])


@dataclass
class BlindSample:
    step: int
    phase: str
    load: int | None  # None: the exporter is gone, the query has no series
    unfinished: int
    replicas: int = 0
    reason: str = ""
    no_fallback: int = 0


FB_TARGET = 10  # jobs per replica in this rehearsal, so that 40 jobs ask for 4 replicas
FB_JOBS = 40


def test_keda_fallback_when_the_exporter_stops(cluster: Cluster, client: Client,
                                               tmp_path: Path) -> None:
    """The exporter stops at zero replicas with jobs coming, then again at 4 replicas."""
    store = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    source = client.upload(png(), "source_image")
    port = free_port()
    proc: subprocess.Popen[bytes] | None = start_exporter(cluster, tmp_path, port)
    scaler = Scaler(fallback=FALLBACK_REPLICAS, target=FB_TARGET)
    plain = Scaler(target=FB_TARGET)
    job_ids: list[str] = []
    samples: list[BlindSample] = []
    blind_steps = FAILURE_THRESHOLD + 3
    # step -> what happens at it: the exporter goes away / comes back, jobs, a worker.
    schedule = {3: "stop", 5: "submit", 3 + blind_steps: "start",
                6 + blind_steps: "stop", 6 + 2 * blind_steps: "start",
                7 + 2 * blind_steps: "worker"}
    start = time.monotonic()
    try:
        step, quiet = 0, 0
        while quiet < COOLDOWN_STEPS + IDLE_STEPS:
            assert time.monotonic() - start < DEADLINE_S, render_blind(samples)
            tick = time.monotonic()
            event = schedule.get(step, "")
            if event == "stop" and proc is not None:
                stop(proc)
                proc = None
            elif event == "start":
                proc = start_exporter(cluster, tmp_path, port)
            elif event == "submit":
                for i in range(FB_JOBS):
                    job_ids.append(client.edit(f"blind {i}", image=source, seed=i,
                                               **SMALL).job_id)
            elif event == "worker":
                cluster.start(MODEL, wait=False)
            load: int | None = None
            if proc is not None:
                load = int(scrape(metrics_url(port))["zq_queue_load"])
            left = unfinished(store, cluster.prefix, job_ids)
            phase = event or ("blind" if proc is None else "seen")
            sample = BlindSample(step, phase, load, left)
            sample.replicas, sample.reason = scaler.decide(step, load)
            sample.no_fallback, _ = plain.decide(step, load)
            samples.append(sample)
            quiet = quiet + 1 if job_ids and not left and step > max(schedule) else 0
            step += 1
            time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - tick)))
    finally:
        if proc is not None:
            stop(proc)
        (tmp_path / "fallback.txt").write_text(render_blind(samples))
        print(f"\n{render_blind(samples)}")
    check_fallback(samples, schedule)


def check_fallback(samples: list[BlindSample], schedule: dict[int, str]) -> None:
    report = render_blind(samples)
    first_stop, first_start, second_stop, second_start = sorted(
        step for step, event in schedule.items() if event in {"stop", "start"})
    idle_blind = samples[first_stop:first_start]
    # Blind at zero: KEDA holds zero for failureThreshold polls, then the fallback replicas.
    assert [s.replicas for s in idle_blind[:FAILURE_THRESHOLD]] == [0] * FAILURE_THRESHOLD
    assert all(s.replicas == FALLBACK_REPLICAS for s in idle_blind[FAILURE_THRESHOLD:]), report
    # Jobs wait meanwhile: without a fallback the type stays at zero under them.
    assert any(s.unfinished and s.no_fallback == 0 for s in idle_blind), report
    # Seen again: the load (40 waiting) asks for 4 replicas.
    before_second = samples[second_stop - 1]
    assert before_second.load == FB_JOBS and before_second.replicas == MAX_REPLICAS, report
    # Blind at 4 replicas with work: never scaled away (the current count is higher).
    assert all(s.replicas == MAX_REPLICAS for s in samples[second_stop:second_start]), report
    # Never zero while a job waits or runs, once KEDA has had its failureThreshold polls.
    starved = [s.step for s in samples[first_stop + FAILURE_THRESHOLD:]
               if s.unfinished and s.replicas == 0]
    assert not starved, report
    # Drained and seen: back to zero after the cooldown.
    assert samples[-1].replicas == 0 and samples[-1].load == 0, report


def render_blind(samples: list[BlindSample]) -> str:
    header = (f"{'step':>4} {'phase':<7} {'load':>4} {'left':>4} {'repl':>4} {'no_fb':>5}  "
              "decision")
    rows = [f"{s.step:>4} {s.phase:<7} {'-' if s.load is None else s.load:>4} "
            f"{s.unfinished:>4} {s.replicas:>4} {s.no_fallback:>5}  {s.reason}"
            for s in samples]
    legend = (f"KEDA fallback replay: failureThreshold {FAILURE_THRESHOLD}, fallback replicas "
              f"{FALLBACK_REPLICAS} (currentReplicasIfHigher), target {FB_TARGET}/replica, "
              f"replicas {MIN_REPLICAS}..{MAX_REPLICAS}; load '-': exporter gone, no series")
    return "\n".join([legend, header, *rows])
