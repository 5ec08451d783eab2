"""The job schema: one frozen, validated, JSON-serialisable description of a job.

``new_job`` is the only way a producer builds a spec: it fills the model authors'
defaults, resolves ``model="auto"``, draws a seed, and checks every limit, raising
``InvalidJob`` naming the field and the rule. ``JobSpec.from_dict`` is the one
decode point for specs read back from a queue message or from storage.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from common.adapters import Adapter, check_adapters, parse_adapters
from common.errors import InvalidJob


class JobKind(StrEnum):
    """What a job does with its input."""

    GENERATE = "generate"
    EDIT = "edit"
    REFINE = "refine"


class ModelType(StrEnum):
    """The model type that serves a job; each has its own queue and pinned workers."""

    TURBO = "turbo"
    EDIT = "edit"
    BASE = "base"


class OutputFormat(StrEnum):
    """Image encodings a job may ask for."""

    PNG = "png"
    WEBP = "webp"
    JPEG = "jpeg"


AUTO = "auto"

# Limits checked at submit. The worker checks the size rule again against the
# loaded pipeline, whose VAE decides the real multiple.
SIZE_MULTIPLE_PX = 16
MIN_SIDE_PX = 16
MAX_SIDE_PX = 4096
MAX_PIXELS = 2048 * 2048
MAX_STEPS = 150
MAX_GUIDANCE = 20.0
MAX_PROMPT_CHARS = 2000
MAX_SEED = 2**63 - 1
MIN_PRIORITY, MAX_PRIORITY = 0, 9
DEFAULT_PRIORITY = 5
MAX_TAGS = 32
MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS = 64, 256
MIN_QUALITY, MAX_QUALITY = 1, 100
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
KEY_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/=+]{0,511}$")


@dataclass(frozen=True)
class ModelDefaults:
    """The settings a model type's authors recommend, used when a job omits them."""

    steps: int
    guidance: float
    side_px: int
    strength: float


# Turbo: 9 scheduler steps (8 transformer passes), no guidance. Base: 28-50 steps,
# guidance 3-5. Edit runs on turbo weights until an edit checkpoint ships, at the
# low denoise that keeps the rest of the picture.
MODEL_DEFAULTS: dict[ModelType, ModelDefaults] = {
    ModelType.TURBO: ModelDefaults(steps=9, guidance=0.0, side_px=1024, strength=1.0),
    ModelType.EDIT: ModelDefaults(steps=9, guidance=0.0, side_px=1024, strength=0.5),
    ModelType.BASE: ModelDefaults(steps=40, guidance=4.0, side_px=1024, strength=0.4),
}


def route(kind: JobKind, model: str) -> ModelType:
    """The conversation rule: nothing to start from -> turbo, an edit -> edit, a refine -> base.

    An explicit model wins, except that a generate job has no image for an edit model.
    """
    if model == AUTO:
        return {
            JobKind.GENERATE: ModelType.TURBO,
            JobKind.EDIT: ModelType.EDIT,
            JobKind.REFINE: ModelType.BASE,
        }[kind]
    try:
        return ModelType(model)
    except ValueError:
        raise InvalidJob("model", "one of auto, turbo, edit, base", model) from None


@dataclass(frozen=True)
class JobSpec:
    """A complete, validated job. Construction validates; instances never change."""

    job_id: str
    kind: JobKind
    model: ModelType
    conversation_id: str
    prompt: str
    seed: int
    steps: int
    guidance: float
    width: int | None = None
    height: int | None = None
    parent_id: str | None = None
    source_image: str | None = None
    negative_prompt: str = ""
    strength: float | None = None
    mask: str | None = None
    priority: int = DEFAULT_PRIORITY
    tags: dict[str, str] = field(default_factory=dict)
    output_format: OutputFormat = OutputFormat.PNG
    quality: int | None = None
    # LoRA adapters (common.adapters): a brand's style, applied by the worker.
    adapters: tuple[Adapter, ...] = ()

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def has_input_image(self) -> bool:
        """Whether the job starts from an image (its parent's or a source image)."""
        return self.parent_id is not None or self.source_image is not None

    def to_dict(self) -> dict[str, Any]:
        """A plain JSON-serialisable dict; ``from_dict`` turns it back into this spec."""
        data = dataclasses.asdict(self)
        data["tags"] = dict(self.tags)
        data["adapters"] = [adapter.to_dict() for adapter in self.adapters]
        # Added later: a spec that does not use them serialises as it always did, so a
        # job resubmitted across an upgrade is still the same job.
        for name in ("quality", "adapters"):
            if not data[name]:
                del data[name]
        return {k: (v.value if isinstance(v, StrEnum) else v) for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Decode a spec, refusing unknown fields and wrong types with ``InvalidJob``."""
        _reject_unknown(data, _FIELD_NAMES)
        try:
            kind = JobKind(data["kind"])
        except (KeyError, ValueError):
            raise InvalidJob("kind", "one of generate, edit, refine", data.get("kind")) from None
        fields = dict(data)
        fields["kind"] = kind
        fields["model"] = route(kind, str(fields.get("model", AUTO)))
        fields["output_format"] = _output_format(fields.get("output_format", "png"))
        fields["adapters"] = parse_adapters(fields.get("adapters"))
        missing = [n for n in _REQUIRED if n not in fields]
        if missing:
            raise InvalidJob(missing[0], "is required")
        return cls(**fields)


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(JobSpec))
_REQUIRED = ("job_id", "conversation_id", "prompt", "seed", "steps", "guidance")


def new_job(kind: str | JobKind, **given: Any) -> JobSpec:
    """Build a job from what a producer gave, filling defaults; raises ``InvalidJob``.

    Omitted ``job_id`` -> a fresh uuid; omitted ``seed`` -> drawn now and recorded;
    omitted ``conversation_id`` -> the job starts its own conversation.
    """
    _reject_unknown(given, _FIELD_NAMES - {"kind"})
    try:
        job_kind = JobKind(kind)
    except ValueError:
        raise InvalidJob("kind", "one of generate, edit, refine", kind) from None
    model = route(job_kind, str(given.pop("model", None) or AUTO))
    defaults = MODEL_DEFAULTS[model]
    fields: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    job_id = fields.setdefault("job_id", uuid.uuid4().hex)
    fields.setdefault("conversation_id", job_id)
    fields.setdefault("seed", secrets.randbelow(2**31))
    fields.setdefault("steps", defaults.steps)
    fields.setdefault("guidance", defaults.guidance)
    fields.setdefault("prompt", "")
    if job_kind is JobKind.GENERATE:
        if "width" not in fields and "height" not in fields:
            fields["width"] = fields["height"] = defaults.side_px
    else:
        fields.setdefault("strength", defaults.strength)
    fields["output_format"] = _output_format(fields.get("output_format", "png"))
    fields["adapters"] = parse_adapters(fields.get("adapters"))
    return JobSpec(kind=job_kind, model=model, **fields)


def _output_format(value: object) -> OutputFormat:
    try:
        return OutputFormat(str(value).lower())
    except ValueError:
        raise InvalidJob("output_format", "one of png, webp, jpeg", value) from None


def _reject_unknown(data: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidJob(unknown[0], "is not a known job field")


def _validate(job: JobSpec) -> None:
    _check_id("job_id", job.job_id)
    _check_id("conversation_id", job.conversation_id)
    _check_types(job)
    _check_inputs(job)
    _check_prompt(job)
    _check_size(job)
    _check_numbers(job)
    _check_tags(job.tags)
    _check_quality(job)
    check_adapters(job.adapters)
    _check_text(job)


def _check_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise InvalidJob(name, "1-100 characters of letters, digits, '_', '.', '-'", value)


def _check_key(name: str, value: object) -> None:
    if not isinstance(value, str) or not KEY_PATTERN.fullmatch(value) or ".." in value:
        raise InvalidJob(name, "a storage key: 1-512 characters, no leading '/' or '.', no '..'",
                         value)


def _check_types(job: JobSpec) -> None:
    for name in ("seed", "steps", "priority"):
        value = getattr(job, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidJob(name, "must be an integer", value)
    for name in ("guidance", "strength"):
        value = getattr(job, name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)):
            raise InvalidJob(name, "must be a number", value)
    for name in ("prompt", "negative_prompt"):
        if not isinstance(getattr(job, name), str):
            raise InvalidJob(name, "must be a string", getattr(job, name))


def _check_inputs(job: JobSpec) -> None:
    if job.parent_id is not None:
        _check_id("parent_id", job.parent_id)
    if job.source_image is not None:
        _check_key("source_image", job.source_image)
    if job.mask is not None:
        _check_key("mask", job.mask)
    if job.kind is JobKind.GENERATE:
        if job.has_input_image:
            name = "parent_id" if job.parent_id is not None else "source_image"
            raise InvalidJob(name, "a generate job starts from nothing; use edit or refine")
        if job.strength is not None:
            raise InvalidJob("strength", "applies only to edit and refine jobs", job.strength)
        if job.mask is not None:
            raise InvalidJob("mask", "needs an image to edit (a parent or a source image)")
        if job.model is ModelType.EDIT:
            raise InvalidJob("model", "the edit model needs an image; use turbo or base")
        return
    if job.parent_id is not None and job.source_image is not None:
        raise InvalidJob("source_image", "give a parent_id or a source_image, not both")
    if not job.has_input_image:
        raise InvalidJob("parent_id", f"{job.kind.value} jobs need a parent_id or source_image")
    if job.mask is not None and job.kind is not JobKind.EDIT:
        raise InvalidJob("mask", "applies only to edit jobs")


def _check_prompt(job: JobSpec) -> None:
    for name in ("prompt", "negative_prompt"):
        length = len(getattr(job, name))
        if length > MAX_PROMPT_CHARS:
            raise InvalidJob(name, f"at most {MAX_PROMPT_CHARS} characters", length)
    if not job.prompt.strip() and job.kind is not JobKind.REFINE:
        raise InvalidJob("prompt", f"{job.kind.value} jobs need a non-empty prompt")


def _check_size(job: JobSpec) -> None:
    if (job.width is None) != (job.height is None):
        raise InvalidJob("width", "give width and height together, or neither")
    for name in ("width", "height"):
        side = getattr(job, name)
        if side is None:
            continue
        if not isinstance(side, int) or isinstance(side, bool):
            raise InvalidJob(name, "must be an integer", side)
        if side % SIZE_MULTIPLE_PX:
            raise InvalidJob(name, f"must be a multiple of {SIZE_MULTIPLE_PX} pixels", side)
        if not MIN_SIDE_PX <= side <= MAX_SIDE_PX:
            raise InvalidJob(name, f"between {MIN_SIDE_PX} and {MAX_SIDE_PX} pixels", side)
    if job.width is not None and job.height is not None:
        pixels = job.width * job.height
        if pixels > MAX_PIXELS:
            raise InvalidJob("width", f"width x height at most {MAX_PIXELS} pixels", pixels)


def _check_numbers(job: JobSpec) -> None:
    if not 0 <= job.seed <= MAX_SEED:
        raise InvalidJob("seed", f"between 0 and {MAX_SEED}", job.seed)
    if not 1 <= job.steps <= MAX_STEPS:
        raise InvalidJob("steps", f"between 1 and {MAX_STEPS}", job.steps)
    if not 0.0 <= job.guidance <= MAX_GUIDANCE:
        raise InvalidJob("guidance", f"between 0 and {MAX_GUIDANCE}", job.guidance)
    if job.strength is not None and not 0.0 < job.strength <= 1.0:
        raise InvalidJob("strength", "greater than 0 and at most 1", job.strength)
    if not MIN_PRIORITY <= job.priority <= MAX_PRIORITY:
        raise InvalidJob("priority", f"between {MIN_PRIORITY} and {MAX_PRIORITY}", job.priority)


def _check_quality(job: JobSpec) -> None:
    if job.quality is None:
        return
    if not isinstance(job.quality, int) or isinstance(job.quality, bool):
        raise InvalidJob("quality", "must be an integer", job.quality)
    if job.output_format is OutputFormat.PNG:
        raise InvalidJob("quality", "applies to jpeg and webp only (png is lossless)",
                         job.quality)
    if not MIN_QUALITY <= job.quality <= MAX_QUALITY:
        raise InvalidJob("quality", f"between {MIN_QUALITY} and {MAX_QUALITY}", job.quality)


def _check_text(job: JobSpec) -> None:
    """Every string must encode as UTF-8, or it passes here and breaks on the worker."""
    named: list[tuple[str, object]] = [(name, getattr(job, name)) for name in _TEXT_FIELDS]
    named += [("tags", text) for pair in job.tags.items() for text in pair]
    for name, value in named:
        if isinstance(value, str) and not _encodable(value):
            raise InvalidJob(name, "must be valid Unicode text (no lone surrogates)", value)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_TEXT_FIELDS = ("prompt", "negative_prompt", "job_id", "conversation_id", "parent_id",
                "source_image", "mask")


def _check_tags(tags: object) -> None:
    if not isinstance(tags, dict):
        raise InvalidJob("tags", "a mapping of string keys to string values", tags)
    if len(tags) > MAX_TAGS:
        raise InvalidJob("tags", f"at most {MAX_TAGS} tags", len(tags))
    for key, value in tags.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_TAG_KEY_CHARS:
            raise InvalidJob("tags", f"keys are strings of 1-{MAX_TAG_KEY_CHARS} characters", key)
        if not isinstance(value, str) or len(value) > MAX_TAG_VALUE_CHARS:
            raise InvalidJob("tags", f"values are strings of at most {MAX_TAG_VALUE_CHARS}", value)
