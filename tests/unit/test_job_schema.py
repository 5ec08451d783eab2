"""The job schema: defaults, routing, round trip, and every limit ``new_job`` enforces."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.errors import InvalidJob
from common.job import (
    MAX_SEED,
    JobKind,
    JobSpec,
    ModelType,
    OutputFormat,
    new_job,
)

EDIT_INPUT: dict[str, Any] = {"parent_id": "parent-1"}


# --- defaults ------------------------------------------------------------------------------


def test_turbo_defaults_for_generate() -> None:
    job = new_job("generate", prompt="a red fox")
    assert job.model is ModelType.TURBO
    assert (job.steps, job.guidance) == (9, 0.0)
    assert (job.width, job.height) == (1024, 1024)
    assert job.strength is None
    assert job.output_format is OutputFormat.PNG
    assert job.priority == 5


def test_base_defaults() -> None:
    job = new_job("generate", prompt="a red fox", model="base")
    assert job.model is ModelType.BASE
    assert job.guidance == 4.0
    assert job.steps == 40


def test_edit_defaults() -> None:
    job = new_job("edit", prompt="make it blue", **EDIT_INPUT)
    assert job.model is ModelType.EDIT
    assert job.strength == 0.5
    assert (job.steps, job.guidance) == (9, 0.0)
    # An edit keeps its input's size unless told otherwise.
    assert (job.width, job.height) == (None, None)


def test_refine_defaults_come_from_base() -> None:
    job = new_job("refine", **EDIT_INPUT)
    assert job.model is ModelType.BASE
    assert job.guidance == 4.0
    assert job.strength == 0.4


def test_given_values_win_over_defaults() -> None:
    job = new_job("generate", prompt="p", steps=20, guidance=2.5, width=512, height=768)
    assert (job.steps, job.guidance, job.width, job.height) == (20, 2.5, 512, 768)


def test_seed_is_drawn_and_recorded_when_omitted() -> None:
    seeds = {new_job("generate", prompt="p").seed for _ in range(8)}
    assert all(isinstance(s, int) and 0 <= s <= MAX_SEED for s in seeds)
    # Eight draws from 2**31 values colliding into one is (practically) impossible.
    assert len(seeds) > 1


def test_given_seed_is_kept() -> None:
    assert new_job("generate", prompt="p", seed=1234).seed == 1234
    assert new_job("generate", prompt="p", seed=0).seed == 0


def test_job_id_is_generated_and_unique() -> None:
    first, second = new_job("generate", prompt="p"), new_job("generate", prompt="p")
    assert first.job_id and second.job_id
    assert first.job_id != second.job_id


def test_conversation_id_defaults_to_job_id() -> None:
    job = new_job("generate", prompt="p")
    assert job.conversation_id == job.job_id
    named = new_job("generate", prompt="p", job_id="job-7")
    assert named.conversation_id == "job-7"
    joined = new_job("edit", prompt="p", job_id="job-8", conversation_id="conv-1", **EDIT_INPUT)
    assert (joined.job_id, joined.conversation_id) == ("job-8", "conv-1")


# --- routing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "extra", "expected"),
    [
        ("generate", {"prompt": "p"}, ModelType.TURBO),
        ("edit", {"prompt": "p", **EDIT_INPUT}, ModelType.EDIT),
        ("refine", EDIT_INPUT, ModelType.BASE),
    ],
)
@pytest.mark.parametrize("model", ["auto", None])
def test_auto_routing(kind: str, extra: dict[str, Any], expected: ModelType,
                      model: str | None) -> None:
    assert new_job(kind, model=model, **extra).model is expected
    assert new_job(kind, **extra).model is expected


@pytest.mark.parametrize(
    ("kind", "model", "extra"),
    [
        ("generate", "base", {"prompt": "p"}),
        ("generate", "turbo", {"prompt": "p"}),
        ("edit", "turbo", {"prompt": "p", **EDIT_INPUT}),
        ("edit", "base", {"prompt": "p", **EDIT_INPUT}),
        ("refine", "turbo", EDIT_INPUT),
        ("refine", "edit", EDIT_INPUT),
    ],
)
def test_explicit_model_wins(kind: str, model: str, extra: dict[str, Any]) -> None:
    assert new_job(kind, model=model, **extra).model is ModelType(model)


def test_kind_accepts_enum() -> None:
    assert new_job(JobKind.REFINE, **EDIT_INPUT).kind is JobKind.REFINE


# --- round trip ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job",
    [
        new_job("generate", prompt="a fox", seed=7, tags={"batch": "b1"}, output_format="webp"),
        new_job("edit", prompt="blue", source_image="uploads/ab/abcd.png", mask="uploads/m.png",
                strength=0.7, priority=0, negative_prompt="blurry"),
        new_job("refine", parent_id="p-1", width=2048, height=2048, model="base"),
    ],
    ids=["generate", "edit", "refine"],
)
def test_round_trip_is_equal_and_json_serialisable(job: JobSpec) -> None:
    data = job.to_dict()
    text = json.dumps(data)
    back = JobSpec.from_dict(json.loads(text))
    assert back == job
    assert back.to_dict() == data
    assert isinstance(data["kind"], str) and isinstance(data["model"], str)
    assert isinstance(data["output_format"], str)


def test_to_dict_tags_are_a_copy() -> None:
    job = new_job("generate", prompt="p", tags={"a": "1"})
    data = job.to_dict()
    data["tags"]["b"] = "2"
    assert job.tags == {"a": "1"}


def test_from_dict_requires_fields() -> None:
    data = new_job("generate", prompt="p").to_dict()
    del data["seed"]
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(data)
    assert info.value.field == "seed"


def test_from_dict_rejects_unknown_kind() -> None:
    data = new_job("generate", prompt="p").to_dict()
    data["kind"] = "paint"
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(data)
    assert info.value.field == "kind"


# --- limits --------------------------------------------------------------------------------

GEN: dict[str, Any] = {"prompt": "a red fox"}
EDIT: dict[str, Any] = {"prompt": "make it blue", **EDIT_INPUT}

LIMITS: list[Any] = [
    # (id, kind, given, field, words the message must contain)
    ("width-not-multiple", "generate", {**GEN, "width": 1000, "height": 1024}, "width", "16"),
    ("height-not-multiple", "generate", {**GEN, "width": 1024, "height": 1000}, "height", "16"),
    ("width-below-min", "generate", {**GEN, "width": 0, "height": 64}, "width", "16"),
    ("width-negative", "generate", {**GEN, "width": -16, "height": 64}, "width", "16"),
    ("height-below-min", "generate", {**GEN, "width": 64, "height": 0}, "height", "16"),
    ("width-above-max", "generate", {**GEN, "width": 4112, "height": 64}, "width", "4096"),
    ("height-above-max", "generate", {**GEN, "width": 64, "height": 4112}, "height", "4096"),
    ("too-many-pixels", "generate", {**GEN, "width": 4096, "height": 1040}, "width",
     str(2048 * 2048)),
    ("square-too-many-pixels", "generate", {**GEN, "width": 2064, "height": 2048}, "width",
     str(2048 * 2048)),
    ("only-width-generate", "generate", {**GEN, "width": 512}, "width", "together"),
    ("only-height-generate", "generate", {**GEN, "height": 512}, "width", "together"),
    ("only-width-edit", "edit", {**EDIT, "width": 512}, "width", "together"),
    ("width-float", "generate", {**GEN, "width": 512.0, "height": 512}, "width", "integer"),
    ("steps-zero", "generate", {**GEN, "steps": 0}, "steps", "150"),
    ("steps-151", "generate", {**GEN, "steps": 151}, "steps", "150"),
    ("guidance-negative", "generate", {**GEN, "guidance": -0.5}, "guidance", "20"),
    ("guidance-above-max", "generate", {**GEN, "guidance": 20.5}, "guidance", "20"),
    ("guidance-nan", "generate", {**GEN, "guidance": float("nan")}, "guidance", "20"),
    ("prompt-too-long", "generate", {"prompt": "x" * 2001}, "prompt", "2000"),
    ("negative-prompt-too-long", "generate", {**GEN, "negative_prompt": "x" * 2001},
     "negative_prompt", "2000"),
    ("empty-prompt-generate", "generate", {"prompt": ""}, "prompt", "non-empty"),
    ("blank-prompt-generate", "generate", {"prompt": "   "}, "prompt", "non-empty"),
    ("missing-prompt-generate", "generate", {}, "prompt", "non-empty"),
    ("empty-prompt-edit", "edit", {**EDIT, "prompt": ""}, "prompt", "non-empty"),
    ("strength-zero", "edit", {**EDIT, "strength": 0}, "strength", "at most 1"),
    ("strength-1.5", "edit", {**EDIT, "strength": 1.5}, "strength", "at most 1"),
    ("strength-refine-1.5", "refine", {**EDIT_INPUT, "strength": 1.5}, "strength", "at most 1"),
    ("strength-on-generate", "generate", {**GEN, "strength": 0.5}, "strength",
     "edit and refine"),
    ("mask-on-generate", "generate", {**GEN, "mask": "uploads/m.png"}, "mask", "image"),
    ("mask-on-refine", "refine", {**EDIT_INPUT, "mask": "uploads/m.png"}, "mask",
     "only to edit"),
    ("edit-without-input", "edit", {"prompt": "p"}, "parent_id", "source_image"),
    ("refine-without-input", "refine", {}, "parent_id", "source_image"),
    ("edit-with-both-inputs", "edit", {**EDIT, "source_image": "uploads/a.png"},
     "source_image", "not both"),
    ("generate-with-parent", "generate", {**GEN, "parent_id": "p-1"}, "parent_id",
     "starts from nothing"),
    ("generate-with-source-image", "generate", {**GEN, "source_image": "uploads/a.png"},
     "source_image", "starts from nothing"),
    ("edit-model-for-generate", "generate", {**GEN, "model": "edit"}, "model", "image"),
    ("unknown-model", "generate", {**GEN, "model": "sdxl"}, "model", "turbo"),
    ("unknown-field", "generate", {**GEN, "sampler": "euler"}, "sampler",
     "not a known job field"),
    ("priority-negative", "generate", {**GEN, "priority": -1}, "priority", "between 0 and 9"),
    ("priority-10", "generate", {**GEN, "priority": 10}, "priority", "between 0 and 9"),
    ("seed-negative", "generate", {**GEN, "seed": -1}, "seed", "between 0"),
    ("seed-too-big", "generate", {**GEN, "seed": MAX_SEED + 1}, "seed", str(MAX_SEED)),
    ("job-id-space", "generate", {**GEN, "job_id": "a b"}, "job_id", "1-100 characters"),
    ("job-id-colon", "generate", {**GEN, "job_id": "x:y"}, "job_id", "1-100 characters"),
    ("job-id-101-chars", "generate", {**GEN, "job_id": "a" * 101}, "job_id",
     "1-100 characters"),
    ("job-id-leading-dot", "generate", {**GEN, "job_id": ".hidden"}, "job_id",
     "1-100 characters"),
    ("job-id-trailing-newline", "generate", {**GEN, "job_id": "abc\n"}, "job_id",
     "1-100 characters"),
    ("job-id-not-str", "generate", {**GEN, "job_id": 12}, "job_id", "1-100 characters"),
    ("conversation-id-slash", "generate", {**GEN, "conversation_id": "a/b"},
     "conversation_id", "1-100 characters"),
    ("parent-id-bad", "edit", {"prompt": "p", "parent_id": "../p"}, "parent_id",
     "1-100 characters"),
    ("source-image-dotdot", "edit", {"prompt": "p", "source_image": "uploads/../secret.png"},
     "source_image", "no '..'"),
    ("mask-dotdot", "edit", {**EDIT, "mask": "../m.png"}, "mask", "no '..'"),
    ("source-image-trailing-newline", "edit", {"prompt": "p", "source_image": "a.png\n"},
     "source_image", "no '..'"),
    ("source-image-absolute", "edit", {"prompt": "p", "source_image": "/etc/passwd"},
     "source_image", "no leading '/'"),
    ("tags-not-dict", "generate", {**GEN, "tags": ["a", "b"]}, "tags", "mapping"),
    ("tags-too-many", "generate", {**GEN, "tags": {f"k{i}": "v" for i in range(33)}}, "tags",
     "at most 32"),
    ("tag-value-too-long", "generate", {**GEN, "tags": {"k": "v" * 257}}, "tags",
     "at most 256"),
    ("tag-key-too-long", "generate", {**GEN, "tags": {"k" * 65: "v"}}, "tags", "1-64"),
    ("tag-key-empty", "generate", {**GEN, "tags": {"": "v"}}, "tags", "1-64"),
    ("tag-value-not-str", "generate", {**GEN, "tags": {"k": 3}}, "tags", "256"),
    ("output-format-gif", "generate", {**GEN, "output_format": "gif"}, "output_format",
     "png"),
    ("seed-bool", "generate", {**GEN, "seed": True}, "seed", "integer"),
    ("steps-str", "generate", {**GEN, "steps": "9"}, "steps", "integer"),
    ("priority-float", "generate", {**GEN, "priority": 5.0}, "priority", "integer"),
    ("guidance-str", "generate", {**GEN, "guidance": "4"}, "guidance", "number"),
    ("strength-bool", "edit", {**EDIT, "strength": True}, "strength", "number"),
    ("prompt-not-str", "generate", {"prompt": 42}, "prompt", "string"),
    ("quality-png", "generate", {**GEN, "quality": 80}, "quality", "jpeg and webp only"),
    ("quality-zero", "generate", {**GEN, "output_format": "jpeg", "quality": 0}, "quality",
     "between 1 and 100"),
    ("quality-101", "generate", {**GEN, "output_format": "webp", "quality": 101}, "quality",
     "between 1 and 100"),
    ("quality-str", "generate", {**GEN, "output_format": "jpeg", "quality": "90"}, "quality",
     "integer"),
]


@pytest.mark.parametrize(
    ("kind", "given", "field", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in LIMITS],
)
def test_new_job_enforces_limit(kind: str, given: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(InvalidJob) as info:
        new_job(kind, **given)
    assert info.value.field == field
    assert words in info.value.limit
    assert str(info.value).startswith(f"{field}: {info.value.limit}")


# Cases that break a rule by leaving a field out, or that are refused before the spec is
# built; they cannot be expressed by overlaying fields on a valid dict, and are tested
# on their own below.
_BY_OMISSION = {
    "only-width-generate", "only-height-generate", "missing-prompt-generate",
    "edit-without-input", "refine-without-input",
    "unknown-field", "unknown-model", "output-format-gif",
}


@pytest.mark.parametrize(
    ("kind", "given", "field"),
    [pytest.param(*case[1:4], id=case[0]) for case in LIMITS if case[0] not in _BY_OMISSION],
)
def test_from_dict_enforces_the_same_limits(kind: str, given: dict[str, Any], field: str) -> None:
    """A spec read back from a queue is held to the same rules as a fresh one."""
    base = new_job(kind, **_valid_version(kind)).to_dict()
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict({**base, **given})
    assert info.value.field == field


def test_from_dict_refuses_width_without_height() -> None:
    data = {**new_job("generate", prompt="p").to_dict(), "height": None}
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(data)
    assert info.value.field == "width"


def test_from_dict_refuses_edit_without_input() -> None:
    data = {**new_job("edit", **EDIT).to_dict(), "parent_id": None}
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(data)
    assert info.value.field == "parent_id"


def test_from_dict_requires_prompt() -> None:
    data = new_job("generate", prompt="p").to_dict()
    del data["prompt"]
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(data)
    assert info.value.field == "prompt"


def test_negative_prompt_error_reports_its_own_length() -> None:
    with pytest.raises(InvalidJob) as info:
        new_job("generate", prompt="short", negative_prompt="x" * 2500)
    assert info.value.value == 2500


def _valid_version(kind: str) -> dict[str, Any]:
    return {"prompt": "p"} if kind == "generate" else {"prompt": "p", **EDIT_INPUT}


def test_unknown_kind() -> None:
    with pytest.raises(InvalidJob) as info:
        new_job("paint", prompt="p")
    assert info.value.field == "kind"
    assert "generate" in str(info.value)


def test_unknown_field_in_from_dict() -> None:
    data = new_job("generate", prompt="p").to_dict()
    data["sampler"] = "euler"
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(data)
    assert info.value.field == "sampler"
    assert "not a known job field" in str(info.value)


def test_output_format_gif_in_from_dict() -> None:
    data = {**new_job("generate", prompt="p").to_dict(), "output_format": "gif"}
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(data)
    assert info.value.field == "output_format"


def test_unknown_model_in_from_dict() -> None:
    data = {**new_job("generate", prompt="p").to_dict(), "model": "sdxl"}
    with pytest.raises(InvalidJob) as info:
        JobSpec.from_dict(data)
    assert info.value.field == "model"


# --- values right at the limits are accepted --------------------------------------------


@pytest.mark.parametrize(
    ("kind", "given"),
    [
        ("generate", {**GEN, "width": 16, "height": 16}),
        ("generate", {**GEN, "width": 4096, "height": 1024}),
        ("generate", {**GEN, "width": 2048, "height": 2048}),
        ("generate", {**GEN, "steps": 1}),
        ("generate", {**GEN, "steps": 150}),
        ("generate", {**GEN, "guidance": 0}),
        ("generate", {**GEN, "guidance": 20}),
        ("generate", {"prompt": "x" * 2000}),
        ("generate", {**GEN, "priority": 0}),
        ("generate", {**GEN, "priority": 9}),
        ("generate", {**GEN, "seed": MAX_SEED}),
        ("generate", {**GEN, "job_id": "a" * 100}),
        ("generate", {**GEN, "job_id": "A1_b.c-d"}),
        ("generate", {**GEN, "tags": {f"k{i}": "v" * 256 for i in range(32)}}),
        ("generate", {**GEN, "output_format": "JPEG"}),
        ("generate", {**GEN, "output_format": "jpeg", "quality": 1}),
        ("generate", {**GEN, "output_format": "webp", "quality": 100}),
        ("edit", {**EDIT, "strength": 1.0}),
        ("edit", {**EDIT, "strength": 0.01}),
        ("edit", {**EDIT, "mask": "uploads/ab/m.png"}),
        ("edit", {"prompt": "p", "source_image": "uploads/ab/abc.png"}),
        ("refine", {"parent_id": "p-1", "prompt": ""}),
    ],
)
def test_values_at_the_limits_are_accepted(kind: str, given: dict[str, Any]) -> None:
    job = new_job(kind, **given)
    for name, value in given.items():
        if name == "output_format":
            assert job.output_format is OutputFormat(value.lower())
        else:
            assert getattr(job, name) == value


def test_quality_is_left_out_of_the_dict_unless_given() -> None:
    # Specs written before ``quality`` existed must compare equal to the same job now.
    plain = new_job("generate", prompt="p", seed=1, job_id="j1")
    assert "quality" not in plain.to_dict()
    assert JobSpec.from_dict(plain.to_dict()) == plain
    lossy = new_job("generate", prompt="p", output_format="jpeg", quality=70)
    assert lossy.to_dict()["quality"] == 70
    assert JobSpec.from_dict(lossy.to_dict()) == lossy
