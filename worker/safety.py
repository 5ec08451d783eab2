"""The safety gate: a prompt check before rendering and an image check before publishing.

The runner asks the gate about a job's prompt before it spends GPU time on it, and about
the decoded image before it writes anything (image or manifest) for the job. A blocked job
fails with ``unsafe`` (``UnsafeContent``); a gate that raises fails the job closed with
``safety_error`` (``SafetyCheckFailed``): nothing is ever published unchecked, and the
worker goes on with its next job.

The built-in gate is a transformers image classifier (``ZQ_SAFETY_MODEL``) and, for prompts,
a text classifier (``ZQ_SAFETY_PROMPT_MODEL``) and/or a blocklist of words, phrases and
``re:`` patterns (``ZQ_SAFETY_PROMPT_BLOCKLIST``, ``ZQ_SAFETY_PROMPT_BLOCKLIST_FILE``).
Operators plug in their own with an entry point in the ``zimage_queue.safety_gates``
group, selected by ``ZQ_SAFETY_GATE``: a factory ``(settings, device) -> SafetyGate``.

This module imports no torch or transformers until a classifier is loaded.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from common.errors import ConfigError, SafetyCheckFailed, UnsafeContent
from common.job import JobKind, JobSpec, ModelType, new_job
from common.settings import Settings, check_blocklist_entry

log = logging.getLogger("zq.worker")

ENTRY_POINT_GROUP = "zimage_queue.safety_gates"
STAGES = ("prompt", "image")


@dataclass(frozen=True)
class Verdict:
    """What a gate says about one prompt or image.

    ``label`` and ``score`` are the highest-scoring unsafe label and its score (0 to 1);
    ``threshold`` the score at which that label blocks. ``detail`` is for the audit trail
    only (never shown to the submitter): which blocklist entry matched, say.
    """

    blocked: bool
    label: str = ""
    score: float = 0.0
    threshold: float = 1.0
    detail: str = ""


PASSED = Verdict(blocked=False)


class SafetyGate(Protocol):
    """The plug-in interface: what a gate of the operator's own implements.

    Both methods are called on the worker's threads (prompts on the job thread, images on
    the storing thread, possibly at the same time) and should return within a second or
    so. Raising fails the job closed with ``safety_error``.
    """

    def check_prompt(self, spec: JobSpec) -> Verdict:
        """Judge the job's prompt before anything is rendered."""

    def check_image(self, image: Image.Image, spec: JobSpec) -> Verdict:
        """Judge the decoded RGB image before anything of the job is stored."""


# -- the built-in gate --------------------------------------------------------------------
Classify = Callable[[Any], list[dict[str, Any]]]
"""A classifier: input -> every label with its score, ``[{"label": ..., "score": ...}]``."""


@dataclass(frozen=True)
class ClassifierCheck:
    """Blocks when any of ``labels`` scores at or above ``threshold`` (labels: any case)."""

    classify: Classify
    labels: tuple[str, ...]
    threshold: float

    def __call__(self, value: Any) -> Verdict:
        """Classify ``value`` and judge the scores."""
        unsafe = {label.casefold() for label in self.labels}
        scores = [(float(s["score"]), str(s["label"])) for s in self.classify(value)
                  if str(s["label"]).casefold() in unsafe]
        if not scores:
            return Verdict(False, threshold=self.threshold)
        score, label = max(scores)
        return Verdict(score >= self.threshold, label, score, self.threshold)


@dataclass(frozen=True)
class Blocklist:
    """Words and phrases (whole words, any case, any spacing) and ``re:`` patterns."""

    patterns: tuple[tuple[str, re.Pattern[str]], ...]

    @classmethod
    def of(cls, entries: Iterable[str]) -> Blocklist:
        """Compile entries: ``re:PATTERN`` as a case-insensitive regex, others as phrases."""
        compiled = []
        for entry in entries:
            if entry.startswith("re:"):
                pattern = re.compile(entry[3:], re.IGNORECASE)
            else:
                words = r"\s+".join(re.escape(word) for word in entry.split())
                pattern = re.compile(rf"(?<!\w){words}(?!\w)", re.IGNORECASE)
            compiled.append((entry, pattern))
        return cls(tuple(compiled))

    def __call__(self, text: str) -> Verdict:
        """Blocked (score 1) on the first entry found in ``text``."""
        for entry, pattern in self.patterns:
            if pattern.search(text):
                return Verdict(True, "blocklist", 1.0, 1.0, f"matched {entry!r}")
        return PASSED


@dataclass(frozen=True)
class BuiltinGate:
    """The gate the settings describe: any of an image check and prompt checks."""

    image: Callable[[Image.Image], Verdict] | None = None
    prompt: Sequence[Callable[[str], Verdict]] = ()

    def check_prompt(self, spec: JobSpec) -> Verdict:
        """The first prompt check that blocks, else a pass.

        Only the prompt: negative prompts name what the image must not show.
        """
        for check in self.prompt:
            verdict = check(spec.prompt)
            if verdict.blocked:
                return verdict
        return PASSED

    def check_image(self, image: Image.Image, spec: JobSpec) -> Verdict:
        """The image classifier's verdict (a pass without one)."""
        return PASSED if self.image is None else self.image(image)


# -- what the runner calls ----------------------------------------------------------------
class SafetyGuard:
    """Runs a gate for the runner: times it, fails closed, turns a block into ``UnsafeContent``."""

    def __init__(self, gate: SafetyGate, name: str) -> None:
        self.gate = gate
        self.name = name

    def check_prompt(self, spec: JobSpec, timings: dict[str, float]) -> None:
        """Raise ``UnsafeContent`` if the prompt is blocked, ``SafetyCheckFailed`` on a crash."""
        self._judge("prompt", spec, timings, lambda: self.gate.check_prompt(spec))

    def check_image(self, image: Image.Image, spec: JobSpec, timings: dict[str, float]) -> None:
        """Raise ``UnsafeContent`` if the image is blocked, ``SafetyCheckFailed`` on a crash."""
        self._judge("image", spec, timings, lambda: self.gate.check_image(image, spec))

    def _judge(self, stage: str, spec: JobSpec, timings: dict[str, float],
               check: Callable[[], Verdict]) -> None:
        started = time.perf_counter()
        try:
            verdict = check()
            if not isinstance(verdict, Verdict):
                raise TypeError(f"returned {type(verdict).__name__}, not a Verdict")
        except Exception as exc:
            log.error("job %s: the %s safety gate failed; the job fails closed", spec.job_id,
                      stage, exc_info=exc)
            raise SafetyCheckFailed(f"the {stage} safety gate ({self.name}) failed, so nothing "
                                    f"was published: {type(exc).__name__}: {exc}") from None
        finally:
            timings[f"safety_{stage}"] = time.perf_counter() - started
        if verdict.blocked:
            raise UnsafeContent(stage, verdict.label, verdict.score, verdict.threshold,
                                verdict.detail)


def load_guard(settings: Settings, device: str = "cpu") -> SafetyGuard | None:
    """The gate the settings ask for, loaded and tried once; None when it is off.

    Any problem (a missing entry point, a model that does not load, labels it does not
    have, a gate that fails on a blank image) is a ``ConfigError``: the worker does not start.
    """
    if not settings.safety_enabled:
        return None
    if settings.safety_gate:
        gate, name = _plugin(settings, device), f"plug-in {settings.safety_gate!r}"
    else:
        gate, name = _builtin(settings, device), "built-in"
    guard = SafetyGuard(gate, name)
    _try_out(guard)
    return guard


def _plugin(settings: Settings, device: str) -> SafetyGate:
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == settings.safety_gate]
    if not found:
        known = sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
        installed = ", ".join(known) or "none"
        raise ConfigError(f"ZQ_SAFETY_GATE={settings.safety_gate!r}: no such entry point in "
                          f"the {ENTRY_POINT_GROUP} group (installed: {installed})")
    try:
        factory = found[0].load()
        gate: SafetyGate = factory(settings, device)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"ZQ_SAFETY_GATE={settings.safety_gate!r} could not be created: "
                          f"{type(exc).__name__}: {exc}") from exc
    for method in ("check_prompt", "check_image"):
        if not callable(getattr(gate, method, None)):
            raise ConfigError(f"ZQ_SAFETY_GATE={settings.safety_gate!r} made a "
                              f"{type(gate).__name__}, which has no {method}()")
    return gate


def _builtin(settings: Settings, device: str) -> BuiltinGate:
    image = None
    if settings.safety_model:
        image = ClassifierCheck(
            classifier("image-classification", settings.safety_model, settings.safety_labels,
                       device, "ZQ_SAFETY_MODEL"),
            settings.safety_labels, settings.safety_threshold)
    prompt: list[Callable[[str], Verdict]] = []
    entries = [*settings.safety_prompt_blocklist, *_blocklist_file(settings)]
    if entries:
        prompt.append(Blocklist.of(entries))
    if settings.safety_prompt_model:
        prompt.append(ClassifierCheck(
            classifier("text-classification", settings.safety_prompt_model,
                       settings.safety_prompt_labels, device, "ZQ_SAFETY_PROMPT_MODEL"),
            settings.safety_prompt_labels, settings.safety_prompt_threshold))
    return BuiltinGate(image, tuple(prompt))


def _blocklist_file(settings: Settings) -> list[str]:
    """One entry per line; blank lines and lines starting with ``#`` are skipped."""
    name = settings.safety_prompt_blocklist_file
    if not name:
        return []
    try:
        lines = Path(name).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"ZQ_SAFETY_PROMPT_BLOCKLIST_FILE {name!r} cannot be read: "
                          f"{exc}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    for entry in entries:
        check_blocklist_entry(entry, f"ZQ_SAFETY_PROMPT_BLOCKLIST_FILE {name!r}")
    return entries


def classifier(task: str, source: str, labels: tuple[str, ...], device: str,
               setting: str) -> Classify:
    """A transformers ``pipeline(task)`` from a hub id[``@rev``] or directory, on ``device``.

    It answers with every label's score. ``ConfigError`` if it does not load, or if one
    of ``labels`` is not a label of the model (a typo would otherwise pass everything).
    """
    model, _, revision = source.partition("@")
    if Path(source).exists():
        model, revision = source, ""
    try:
        loaded = _pipeline(task, model=model, revision=revision or None, device=device)
    except Exception as exc:
        raise ConfigError(f"{setting}={source!r} could not be loaded as a {task} model: "
                          f"{type(exc).__name__}: {exc}") from exc
    known = [str(label) for label in loaded.model.config.id2label.values()]
    missing = [label for label in labels
               if label.casefold() not in {k.casefold() for k in known}]
    if missing:
        raise ConfigError(f"{setting}={source!r} has no label {missing[0]!r} (its labels: "
                          f"{', '.join(known)}); set the unsafe labels to some of these")
    count = len(known)

    def classify(value: Any) -> list[dict[str, Any]]:
        scores = loaded(value, top_k=count)
        # A single input answers with one list of scores (some versions nest it once more).
        if scores and isinstance(scores[0], list):
            scores = scores[0]
        return list(scores)

    return classify


def _pipeline(task: str, **options: Any) -> Any:
    """transformers' ``pipeline``, imported only when a classifier is loaded."""
    from transformers import pipeline

    return pipeline(task, **options)  # type: ignore[call-overload]


def _try_out(guard: SafetyGuard) -> None:
    """Run both checks once, at boot: the first job pays no first-call cost, and a gate
    that cannot run stops the worker from starting instead of failing every job."""
    job = new_job(JobKind.GENERATE, prompt="warm-up", seed=0, steps=1, width=64, height=64,
                  model=ModelType.TURBO.value)
    try:
        guard.check_prompt(job, {})
        guard.check_image(Image.new("RGB", (64, 64), (127, 127, 127)), job, {})
    except UnsafeContent:
        pass  # a blocked blank image or test prompt is the gate's business, not a fault
    except SafetyCheckFailed as exc:
        raise ConfigError(f"the safety gate does not work: {exc.reason}") from None
