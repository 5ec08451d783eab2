"""The hung-step watchdog: what counts as progress, when it fires, and how it gives up."""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import pytest

from common.errors import ConfigError
from common.settings import Settings
from worker.cli import probe_health
from worker.health import Health, health_path, read_health, write_health
from worker.watchdog import EXIT_STALLED, ProgressWatch, Stall, give_up


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_an_idle_worker_never_stalls(clock: FakeClock) -> None:
    watch = ProgressWatch(clock)
    clock.now += 10_000
    assert watch.stalled(5) is None
    watch.mark("step 1 of 8")  # a stray mark while idle starts nothing
    clock.now += 10_000
    assert watch.stalled(5) is None


def test_a_job_stalls_only_after_the_timeout_since_its_last_progress(clock: FakeClock) -> None:
    watch = ProgressWatch(clock)
    watch.start("j1", "rendering")
    clock.now += 5
    assert watch.stalled(5) is None  # exactly the timeout is not yet a stall
    watch.mark("step 1 of 8")
    clock.now += 4
    watch.mark("step 2 of 8")
    clock.now += 4  # 13 s since the render started, but 4 s since the last step
    assert watch.stalled(5) is None
    clock.now += 1.5
    assert watch.stalled(5) == Stall("j1", "step 2 of 8", 5.5)


def test_a_slow_job_that_keeps_stepping_never_stalls(clock: FakeClock) -> None:
    watch = ProgressWatch(clock)
    watch.start("slow", "rendering")
    for step in range(1, 200):
        clock.now += 4.9
        assert watch.stalled(5) is None
        watch.mark(f"step {step} of 200")


def test_zero_turns_the_watchdog_off(clock: FakeClock) -> None:
    watch = ProgressWatch(clock)
    watch.start("j1", "rendering")
    clock.now += 1e9
    assert watch.stalled(0) is None
    assert watch.stalled(1) is not None


def test_stopping_ends_the_watch_but_only_for_the_job_watched(clock: FakeClock) -> None:
    watch = ProgressWatch(clock)
    watch.start("j1", "rendering")
    watch.stop("older")  # a late stop for another job does not end this one's watch
    clock.now += 60
    assert watch.stalled(5) is not None
    watch.stop("j1")
    assert watch.stalled(5) is None


def test_the_reason_names_the_job_the_phase_and_the_time() -> None:
    reason = Stall("abc", "step 3 of 8", 601.4).reason()
    assert reason == "job abc made no progress for 601s (last: step 3 of 8)"


def test_giving_up_records_what_it_can_then_exits_75() -> None:
    done: list[str] = []
    exits: list[int] = []

    def broken() -> None:
        raise ConnectionError("Redis is away")

    with pytest.raises(SystemExit):
        give_up(Stall("j1", "step 1 of 8", 9.0),
                [lambda: done.append("health"), broken, lambda: done.append("job")],
                exit=exits.append)
    assert done == ["health", "job"]  # a failing step does not stop the others
    assert exits == [EXIT_STALLED] == [75]


def test_giving_up_does_not_wait_for_a_blocked_recording() -> None:
    blocked = threading.Event()
    exits: list[int] = []
    started = time.monotonic()
    with pytest.raises(SystemExit):
        give_up(Stall("j1", "rendering", 9.0), [lambda: blocked.wait(30)], exit=exits.append,
                timeout_s=0.2)
    assert time.monotonic() - started < 5
    assert exits == [EXIT_STALLED]
    blocked.set()


def test_health_files_without_the_stalled_field_still_read(tmp_path: Path) -> None:
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"pid": 1, "model": "turbo", "ready": True, "heartbeat": 0.0,
                                "current_job": None, "interval_s": 5.0}))
    health = read_health(path)
    assert health is not None and health.stalled is None


def _probe(ready: bool = False) -> int:
    return probe_health(argparse.Namespace(model="turbo", ready=ready))


def test_zq_health_fails_a_stalled_worker_with_the_reason(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ZQ_HEALTH_DIR", str(tmp_path))
    from common.job import ModelType

    path = health_path(ModelType.TURBO)
    # Otherwise alive and ready: this process, beating now.
    fresh = Health(pid=os.getpid(), model="turbo", ready=True, heartbeat=time.time(),
                   current_job="j1", interval_s=1.0)
    write_health(path, fresh)
    assert _probe(ready=True) == 0
    reason = Stall("j1", "step 1 of 4", 3.2).reason()
    write_health(path, Health(**{**fresh.__dict__, "ready": False, "stalled": reason}))
    capsys.readouterr()
    assert _probe() == 1
    out = capsys.readouterr().out
    assert out.startswith("stalled: job j1 made no progress for 3s (last: step 1 of 4)")
    assert "exits 75" in out


def test_stall_timeout_setting() -> None:
    assert Settings.from_env({}).stall_timeout_s == 600
    assert Settings().stall_timeout_s < Settings().job_timeout_s
    assert Settings.from_env({"ZQ_STALL_TIMEOUT_S": "0"}).stall_timeout_s == 0
    assert Settings.from_env({"ZQ_STALL_TIMEOUT_S": "3"}).stall_timeout_s == 3
    with pytest.raises(ConfigError, match="ZQ_STALL_TIMEOUT_S must be at least 0"):
        Settings.from_env({"ZQ_STALL_TIMEOUT_S": "-1"})
