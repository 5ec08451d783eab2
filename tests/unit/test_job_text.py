"""Every string of a job must be encodable text: a lone surrogate is refused, field named."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import InvalidJob
from common.job import JobKind, new_job

LONE = ["\ud800", "a\udfffb", "\udcff"]  # the last is what a non-UTF-8 argv byte becomes


@pytest.mark.parametrize("text", LONE)
@pytest.mark.parametrize(("field", "given"), [
    ("prompt", lambda t: {"prompt": t}),
    ("negative_prompt", lambda t: {"prompt": "x", "negative_prompt": t}),
    ("tags", lambda t: {"prompt": "x", "tags": {"sku": t}}),
    ("tags", lambda t: {"prompt": "x", "tags": {t: "v"}}),
    ("job_id", lambda t: {"prompt": "x", "job_id": t}),
    ("conversation_id", lambda t: {"prompt": "x", "conversation_id": t}),
])
def test_lone_surrogate_is_refused_naming_the_field(field: str, given: Any, text: str) -> None:
    with pytest.raises(InvalidJob) as info:
        new_job(JobKind.GENERATE, **given(text))
    assert info.value.field == field
    str(info.value).encode("utf-8")  # the message itself is printable


@pytest.mark.parametrize(("field", "given"), [
    ("parent_id", {"parent_id": "p\ud800"}),
    ("source_image", {"source_image": "uploads/\ud800.png"}),
])
def test_lone_surrogate_in_inputs_is_refused(field: str, given: dict[str, str]) -> None:
    with pytest.raises(InvalidJob) as info:
        new_job(JobKind.EDIT, prompt="x", **given)
    assert info.value.field == field


def test_real_non_ascii_text_is_fine() -> None:
    spec = new_job(JobKind.GENERATE, prompt="caf\u00e9 \U0001f600 \u6f22\u5b57",
                   tags={"sku": "\u00c5-1"})
    assert spec.prompt.endswith("\u6f22\u5b57") and spec.tags == {"sku": "\u00c5-1"}
