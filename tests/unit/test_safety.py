"""The safety gate's logic with fake classifiers: verdicts, thresholds, labels, plug-ins."""

from __future__ import annotations

import time
from importlib.metadata import EntryPoint
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

import worker.safety as safety
from common.errors import ConfigError, SafetyCheckFailed, UnsafeContent
from common.job import JobKind, JobSpec, new_job
from common.settings import Settings
from common.status import JobRecord, JobStatus
from worker.audit import AuditHooks
from worker.hooks import JobOutcome
from worker.metrics import WorkerMetrics
from worker.safety import (
    Blocklist,
    BuiltinGate,
    ClassifierCheck,
    SafetyGuard,
    Verdict,
    load_guard,
)

IMAGE = Image.new("RGB", (8, 8), (200, 10, 10))


def job(prompt: str = "a lighthouse at dusk", negative: str = "") -> JobSpec:
    return new_job(JobKind.GENERATE, prompt=prompt, negative_prompt=negative, width=32,
                   height=32)


def scores(**by_label: float) -> Any:
    return lambda value: [{"label": k, "score": v} for k, v in by_label.items()]


# -- verdicts ------------------------------------------------------------------------------
def test_a_label_blocks_at_or_above_the_threshold_only() -> None:
    check = ClassifierCheck(scores(normal=0.3, nsfw=0.7), ("nsfw",), 0.7)
    assert check(IMAGE) == Verdict(True, "nsfw", 0.7, 0.7)
    assert not ClassifierCheck(scores(normal=0.3, nsfw=0.7), ("nsfw",), 0.71)(IMAGE).blocked
    assert ClassifierCheck(scores(normal=1.0, nsfw=0.0), ("nsfw",), 0.0)(IMAGE).blocked


def test_the_highest_of_several_unsafe_labels_decides_and_case_does_not_matter() -> None:
    check = ClassifierCheck(scores(SFW=0.1, Porn=0.2, Hentai=0.6, Sexy=0.1),
                            ("porn", "hentai"), 0.5)
    assert check(IMAGE) == Verdict(True, "Hentai", 0.6, 0.5)
    # Labels the model gives that are not listed never block.
    assert not ClassifierCheck(scores(normal=0.0, violence=0.99), ("nsfw",), 0.5)(IMAGE).blocked


def test_blocklist_words_phrases_and_patterns() -> None:
    blocklist = Blocklist.of(["gore", "naked   body", r"re:\bkill(s|ed|ing)?\b"])
    assert blocklist("GORE on the floor").blocked
    assert blocklist("a naked\nbody").detail == "matched 'naked   body'"
    assert blocklist("he was killed").blocked
    verdict = blocklist("gore")
    assert (verdict.label, verdict.score, verdict.threshold) == ("blocklist", 1.0, 1.0)
    # Whole words only: a word inside another word is not a match.
    assert not blocklist("Gorey the goremonger's cat in a skillet").blocked


def test_the_prompt_gate_reads_the_prompt_not_the_negative_prompt() -> None:
    gate = BuiltinGate(prompt=(Blocklist.of(["nsfw"]),))
    assert not gate.check_prompt(job("a cat", negative="nsfw, blurry")).blocked
    assert gate.check_prompt(job("a cat, NSFW")).blocked
    assert not gate.check_image(IMAGE, job()).blocked  # no image classifier: a pass


# -- the guard the runner calls ------------------------------------------------------------
class FakeGate:
    def __init__(self, prompt: Verdict | Exception = safety.PASSED,
                 image: Verdict | Exception = safety.PASSED) -> None:
        self.prompt, self.image = prompt, image

    def check_prompt(self, spec: JobSpec) -> Verdict:
        return self._answer(self.prompt)

    def check_image(self, image: Image.Image, spec: JobSpec) -> Verdict:
        return self._answer(self.image)

    @staticmethod
    def _answer(answer: Verdict | Exception) -> Verdict:
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_a_block_is_unsafe_content_with_score_label_and_threshold() -> None:
    guard = SafetyGuard(FakeGate(image=Verdict(True, "nsfw", 0.92, 0.8)), "fake")
    timings: dict[str, float] = {}
    guard.check_prompt(job(), timings)
    with pytest.raises(UnsafeContent) as caught:
        guard.check_image(IMAGE, job(), timings)
    error = caught.value
    assert (error.code, error.stage, error.label, error.score, error.threshold) == (
        "unsafe", "image", "nsfw", 0.92, 0.8)
    assert "'nsfw' scored 0.920" in error.reason and "threshold 0.800" in error.reason
    assert set(timings) == {"safety_prompt", "safety_image"}


def test_a_gate_that_crashes_fails_the_job_closed() -> None:
    guard = SafetyGuard(FakeGate(image=RuntimeError("CUDA error")), "fake")
    with pytest.raises(SafetyCheckFailed) as caught:
        guard.check_image(IMAGE, job(), {})
    assert caught.value.code == "safety_error" and "CUDA error" in caught.value.reason
    with pytest.raises(SafetyCheckFailed, match=r"not a Verdict"):
        SafetyGuard(FakeGate(prompt=None), "fake").check_prompt(job(), {})  # type: ignore[arg-type]


# -- settings and loading ------------------------------------------------------------------
def test_settings_default_off_and_parse_the_gate() -> None:
    assert Settings.from_env({}).safety_enabled is False
    settings = Settings.from_env({
        "ZQ_SAFETY_MODEL": "Falconsai/nsfw_image_detection", "ZQ_SAFETY_THRESHOLD": "0.8",
        "ZQ_SAFETY_LABELS": "nsfw, porn", "ZQ_SAFETY_PROMPT_BLOCKLIST": r"gore, re:kill\w*"})
    assert settings.safety_enabled
    assert (settings.safety_threshold, settings.safety_labels) == (0.8, ("nsfw", "porn"))
    assert settings.safety_prompt_blocklist == ("gore", r"re:kill\w*")


@pytest.mark.parametrize("env, message", [
    ({"ZQ_SAFETY_THRESHOLD": "1.5"}, "ZQ_SAFETY_THRESHOLD must be from 0 to 1"),
    ({"ZQ_SAFETY_PROMPT_THRESHOLD": "high"}, "ZQ_SAFETY_PROMPT_THRESHOLD must be a number"),
    ({"ZQ_SAFETY_PROMPT_BLOCKLIST": "re:("}, "not a valid regular expression"),
])
def test_bad_settings_are_config_errors(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_blocklist_file_entries_and_comments(tmp_path: Path) -> None:
    listed = tmp_path / "blocklist.txt"
    listed.write_text("# words\ngore\n\nre:a{2,3}h\n")
    guard = load_guard(Settings(safety_prompt_blocklist_file=str(listed)))
    assert guard is not None
    with pytest.raises(UnsafeContent):
        guard.check_prompt(job("aaah!"), {})
    guard.check_prompt(job("a calm sea"), {})
    listed.write_text("re:[\n")
    with pytest.raises(ConfigError, match=r"blocklist\.txt"):
        load_guard(Settings(safety_prompt_blocklist_file=str(listed)))
    with pytest.raises(ConfigError, match="cannot be read"):
        load_guard(Settings(safety_prompt_blocklist_file=str(tmp_path / "missing")))


def test_no_gate_configured_loads_nothing() -> None:
    assert load_guard(Settings()) is None


class PluginGate:
    """What an operator's package would register."""

    def __init__(self, settings: Settings, device: str) -> None:
        self.device = device

    def check_prompt(self, spec: JobSpec) -> Verdict:
        return Verdict("forbidden" in spec.prompt, "policy", 1.0, 1.0)

    def check_image(self, image: Image.Image, spec: JobSpec) -> Verdict:
        return safety.PASSED


def broken_factory(settings: Settings, device: str) -> PluginGate:
    raise RuntimeError("licence server unreachable")


def crashing_gate(settings: Settings, device: str) -> FakeGate:
    return FakeGate(image=RuntimeError("no"))


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    names = {"policy": "PluginGate", "broken": "broken_factory", "crashing": "crashing_gate"}
    found = [EntryPoint(name, f"{__name__}:{target}", safety.ENTRY_POINT_GROUP)
             for name, target in names.items()]

    def entry_points(group: str) -> list[EntryPoint]:
        return found if group == safety.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(safety, "entry_points", entry_points)


@pytest.mark.usefixtures("plugins")
def test_a_plugin_gate_is_loaded_by_entry_point_name() -> None:
    guard = load_guard(Settings(safety_gate="policy"), "cuda:0")
    assert guard is not None and guard.name == "plug-in 'policy'"
    assert isinstance(guard.gate, PluginGate) and guard.gate.device == "cuda:0"
    with pytest.raises(UnsafeContent, match=r"'policy' scored 1\.000"):
        guard.check_prompt(job("something forbidden"), {})


@pytest.mark.usefixtures("plugins")
@pytest.mark.parametrize("name, message", [
    ("nope", r"no such entry point .*\(installed: broken, crashing, policy\)"),
    ("broken", "could not be created: RuntimeError: licence server unreachable"),
    ("crashing", "the safety gate does not work"),
])
def test_a_plugin_that_cannot_work_stops_the_boot(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_guard(Settings(safety_gate=name))


def test_a_classifier_missing_a_configured_label_is_a_config_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class Loaded:
        # The attribute path a transformers pipeline has: .model.config.id2label.
        model = SimpleNamespace(config=SimpleNamespace(id2label={0: "normal", 1: "nsfw"}))

        def __call__(self, value: Any, top_k: int) -> list[dict[str, Any]]:
            return [{"label": "nsfw", "score": 0.1}, {"label": "normal", "score": 0.9}][:top_k]

    monkeypatch.setattr(safety, "_pipeline", lambda task, **options: Loaded())
    with pytest.raises(ConfigError, match=r"has no label 'porn' .*its labels: normal, nsfw"):
        safety.classifier("image-classification", "some/model", ("nsfw", "porn"), "cpu",
                          "ZQ_SAFETY_MODEL")
    classify = safety.classifier("image-classification", "some/model", ("NSFW",), "cpu",
                                 "ZQ_SAFETY_MODEL")
    assert ClassifierCheck(classify, ("NSFW",), 0.05)(IMAGE).blocked


# -- metrics and audit ---------------------------------------------------------------------
def blocked_outcome(stage: str) -> JobOutcome:
    spec = job()
    now = time.time()
    record = JobRecord(spec=spec, status=JobStatus.RUNNING, root_id=spec.job_id, turn=0,
                       created_at=now, queued_at=now, started_at=now)
    return JobOutcome(record, JobStatus.FAILED, {f"safety_{stage}": 0.02},
                      UnsafeContent(stage, "nsfw", 0.9, 0.5, "matched 'x'"))


def test_blocks_are_counted_by_stage_with_the_gate_latency() -> None:
    from common.job import ModelType

    metrics = WorkerMetrics(ModelType.TURBO)
    labels = {"model": "turbo", "stage": "prompt"}
    assert metrics.registry.get_sample_value("zq_safety_blocked_total", labels) == 0.0
    metrics.finished(blocked_outcome("prompt"))
    assert metrics.registry.get_sample_value("zq_safety_blocked_total", labels) == 1.0
    assert metrics.registry.get_sample_value(
        "zq_job_failures_total", {"model": "turbo", "code": "unsafe"}) == 1.0
    assert metrics.registry.get_sample_value(
        "zq_job_phase_seconds_sum", {"model": "turbo", "phase": "safety_prompt"}) == 0.02


def test_a_block_is_audited_before_the_failure(caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    from common.audit import audit_log

    audit_log.propagate, was = True, audit_log.propagate
    try:
        with caplog.at_level(logging.INFO, logger="zq.audit"):
            AuditHooks("w1", "src", "rev").finished(blocked_outcome("image"))
    finally:
        audit_log.propagate = was
    blocked, failed = (json.loads(r.getMessage()) for r in caplog.records)
    assert blocked["event"] == "blocked" and failed["event"] == "failed"
    assert (blocked["stage"], blocked["score"], blocked["threshold"], blocked["detail"]) == (
        "image", 0.9, 0.5, "matched 'x'")
    assert failed["error_code"] == "unsafe"
