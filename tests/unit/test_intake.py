"""Reading broker messages as zq task messages: every malformed kind is refused, not raised."""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from kombu.message import Message

from common.deadletters import BAD_ARGS, BAD_JOB_ID, BODY, CONTENT_TYPE, UNKNOWN_TASK
from common.queueing import TASK_NAMES
from worker.intake import Admitted, Refusal, inspect

TASKS = frozenset(TASK_NAMES.values())


def message(body: bytes | str, content_type: str = "application/json",
            headers: Any = None) -> Message:
    headers = {"task": "zq.generate", "id": "m-1"} if headers is None else headers
    return Message(body=body, content_type=content_type, content_encoding="utf-8",
                   headers=headers, delivery_info={"routing_key": "zq.turbo"})


def task_body(args: list[Any], kwargs: dict[str, Any], embed: Any = None) -> str:
    return json.dumps([args, kwargs, embed or {"callbacks": None, "errbacks": None,
                                                "chain": None, "chord": None}])


def test_the_message_a_producer_sends_is_admitted() -> None:
    assert inspect(message(task_body([], {"job_id": "job-1"})), TASKS) == Admitted(
        "zq.generate", "m-1", "job-1")
    assert inspect(message(task_body(["job.2"], {})), TASKS) == Admitted(
        "zq.generate", "m-1", "job.2")
    # Protocol 1: the task and its arguments in the body.
    v1 = json.dumps({"task": "zq.edit", "id": "m-2", "args": ["job-3"], "kwargs": {}})
    assert inspect(message(v1, headers={}), TASKS) == Admitted("zq.edit", "m-2", "job-3")


@pytest.mark.parametrize(("body", "content_type", "headers", "reason", "words"), [
    (b"\x00\x01raw", "application/data", None, CONTENT_TYPE, "application/data"),
    ("hello", "application/text", None, CONTENT_TYPE, "application/text"),
    (pickle.dumps(([], {"job_id": "x"}, {})), "application/x-python-serialize", None,
     CONTENT_TYPE, "python-serialize"),
    ("null", "application/json", None, BODY, "None"),
    ("[1, 2]", "application/json", None, BODY, "list of 2"),
    ("{}", "application/json", None, BODY, "object with 0 keys"),
    ("{}", "application/json", {}, BODY, "no task named"),
    ('"a string"', "application/json", None, BODY, "a string"),
    ("{not json", "application/json", None, BODY, "not JSON"),
    (b"\xff\xfe[]", "application/json", None, BODY, "not JSON"),
    (task_body([], {"job_id": "j"}), "application/json", {"task": "os.system", "id": "m"},
     UNKNOWN_TASK, "os.system"),
    (task_body([], {"job_id": "j"}), "application/json", {"task": "celery.chord", "id": "m"},
     UNKNOWN_TASK, "celery.chord"),
    (task_body([], {"job_id": "j"}), "application/json", {"task": "zq.generate"}, BODY,
     "message id"),
    (task_body([], {}), "application/json", None, BAD_ARGS, "got 0 arguments"),
    (task_body(["a", "b"], {}), "application/json", None, BAD_ARGS, "got 2 arguments"),
    (task_body(["a"], {"job_id": "b"}), "application/json", None, BAD_ARGS, "got 2"),
    (task_body([], {"job_id": "a", "steps": 9}), "application/json", None, BAD_ARGS, "steps"),
    (task_body([7], {}), "application/json", None, BAD_JOB_ID, "int"),
    (task_body(["../etc"], {}), "application/json", None, BAD_JOB_ID, "not a job id"),
    (task_body(["x" * 101], {}), "application/json", None, BAD_JOB_ID, "101 characters"),
    (task_body(["j"], {}, {"callbacks": [{"task": "zq.refine"}]}), "application/json", None,
     BAD_ARGS, "links"),
    (json.dumps([{"job_id": "j"}, [], {}]), "application/json", None, BODY, "not a list"),
])
def test_malformed_messages_are_refused_with_a_reason(body: bytes | str, content_type: str,
                                                      headers: Any, reason: str,
                                                      words: str) -> None:
    verdict = inspect(message(body, content_type, headers), TASKS)
    assert isinstance(verdict, Refusal)
    assert verdict.reason == reason
    assert words in verdict.detail


def test_a_huge_job_id_is_refused_without_echoing_it() -> None:
    verdict = inspect(message(task_body(["j" * 50_000_000], {})), TASKS)
    assert isinstance(verdict, Refusal) and verdict.reason == BAD_JOB_ID
    assert "50000000 characters" in verdict.detail
    assert len(verdict.detail) < 300
