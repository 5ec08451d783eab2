"""What a worker lets in from its queue: one job id for one of our tasks, or a dead letter.

``inspect`` reads a received broker message the way Celery will, but refuses, instead of
raising, anything Celery could not run or would crash on: another serializer, a body that
is not ``[args, kwargs, embed]``, an unknown task, arguments that are not exactly one
job id. ``Intake`` adds the check that the job's record exists and can be read, and
moves every refused message to the dead-letter list and acknowledges it, so the worker
goes on with the next message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import redis
from kombu.message import Message

from common.deadletters import (
    BAD_ARGS,
    BAD_JOB_ID,
    BODY,
    CONTENT_TYPE,
    ENVELOPE,
    UNKNOWN_JOB,
    UNKNOWN_TASK,
    WRONG_QUEUE,
    DeadLetter,
    DeadLetterStore,
)
from common.errors import InvalidJob, JobNotFound
from common.job import ID_PATTERN, JobSpec, ModelType
from common.jobstore import JobStore
from worker.warm_routing import Route, WarmRouting

log = logging.getLogger("zq.worker")

JSON = "application/json"
# Celery's links: a message may ask the worker to send further tasks when it ends. Ours
# never do, and a hostile message must not make a worker publish anything.
LINKS = ("callbacks", "errbacks", "chain", "chord")


@dataclass(frozen=True)
class Refusal:
    """Why a message cannot run: a dead-letter reason code and a sentence."""

    reason: str
    detail: str


@dataclass(frozen=True)
class Admitted:
    """A well-formed message for one of our tasks: its task name, message id and job id."""

    task: str
    message_id: str
    job_id: str


def inspect(message: Message, task_names: Collection[str]) -> Admitted | Refusal:
    """Read ``message`` as a zq task message (Celery protocol 2, or 1), or say why not."""
    headers = message.headers
    if not isinstance(headers, dict):
        return Refusal(ENVELOPE, f"headers are a {type(headers).__name__}, not an object")
    content_type = message.content_type
    if not isinstance(content_type, str) or content_type.strip().lower() != JSON:
        return Refusal(CONTENT_TYPE, f"content type {content_type!r} is not {JSON}")
    if not isinstance(message.body, (bytes, str)):
        return Refusal(BODY, f"the body is a {type(message.body).__name__}, not JSON text")
    try:
        payload = message.decode()  # type: ignore[no-untyped-call]
    except Exception as exc:  # kombu raises whatever the codec raised
        return Refusal(BODY, f"the body is not JSON: {type(exc).__name__}: {_short(exc)}")
    if "task" in headers:
        if isinstance(payload, dict) and ("args" in payload or "kwargs" in payload):
            # Celery's hybrid protocol: v2 headers, v1 body
            return _task_message(headers.get("task"), headers.get("id"),
                                 payload.get("args", ()), payload.get("kwargs", {}), payload,
                                 task_names)
        if not isinstance(payload, (list, tuple)) or len(payload) != 3:
            return Refusal(BODY, f"the body is {_describe(payload)}, not [args, kwargs, embed]")
        args, kwargs, embed = payload
        return _task_message(headers.get("task"), headers.get("id"), args, kwargs, embed,
                             task_names)
    if not isinstance(payload, dict) or "task" not in payload:
        return Refusal(BODY, f"no task named in the headers or the body ({_describe(payload)})")
    return _task_message(payload.get("task"), payload.get("id"), payload.get("args", ()),
                         payload.get("kwargs", {}), payload, task_names)


def _task_message(task: object, message_id: object, args: object, kwargs: object,
                  embed: object, task_names: Collection[str]) -> Admitted | Refusal:
    if not isinstance(task, str) or task not in task_names:
        return Refusal(UNKNOWN_TASK, f"task {_clip(task)} is not one of "
                                     f"{', '.join(sorted(task_names))}")
    if not isinstance(message_id, str) or not message_id:
        return Refusal(BODY, f"message id {_clip(message_id)} is not a string")
    if not isinstance(args, (list, tuple)) or not isinstance(kwargs, dict):
        return Refusal(BODY, f"args {_describe(args)} and kwargs {_describe(kwargs)} are not "
                             "a list and an object")
    if embed is not None and not isinstance(embed, dict):
        return Refusal(BODY, f"the third element is {_describe(embed)}, not an object")
    if isinstance(embed, dict) and any(embed.get(link) for link in LINKS):
        return Refusal(BAD_ARGS, "the message links further tasks (callbacks, chain, chord)")
    extra = sorted(str(name)[:40] for name in kwargs if name != "job_id")
    if extra:
        return Refusal(BAD_ARGS, f"unexpected keyword arguments: {', '.join(extra)}")
    given = [*args, *([kwargs["job_id"]] if "job_id" in kwargs else [])]
    if len(given) != 1:
        return Refusal(BAD_ARGS, f"{task} takes exactly one job id, got {len(given)} arguments")
    job_id = given[0]
    if not isinstance(job_id, str):
        return Refusal(BAD_JOB_ID, f"the job id is a {type(job_id).__name__}, not a string")
    if not ID_PATTERN.fullmatch(job_id):
        return Refusal(BAD_JOB_ID, f"{_clip(job_id)} ({len(job_id)} characters) is not a job "
                                   "id: 1-100 of A-Za-z0-9_.-")
    return Admitted(task, message_id, job_id)


class Intake:
    """Admits runnable messages; dead-letters and acknowledges every other one."""

    def __init__(self, jobs: JobStore, letters: DeadLetterStore, worker_id: str,
                 task_names: Collection[str],
                 on_refused: Callable[[str], None] = lambda reason: None,
                 model: ModelType | None = None,
                 forward: Callable[[JobSpec], None] = lambda spec: None,
                 routing: WarmRouting | None = None) -> None:
        self.jobs = jobs
        # Adapter affinity: a job may be passed to an idle worker holding its adapters.
        self.routing = routing
        # A message for a job of another model type is not run here (this worker holds
        # other weights): it is dead-lettered and the job ``forward``ed to its own queue.
        self.model = model
        self.forward = forward
        self.letters = letters
        self.worker_id = worker_id
        self.task_names = frozenset(task_names)
        self.on_refused = on_refused

    def admit(self, message: Message) -> bool:
        """True if Celery may run ``message``; otherwise it is dead-lettered and acked."""
        verdict = inspect(message, self.task_names)
        if isinstance(verdict, Admitted):
            try:
                # One round trip, not the record: this runs for every message.
                route = self._route(verdict.job_id)
                if route.peer is not None and self._pass_on(message, verdict, route.peer):
                    return False
                if self.model is None or route.model is self.model:
                    return True
                spec = self.jobs.get(verdict.job_id).spec
                verdict = Refusal(WRONG_QUEUE, f"job {spec.job_id} is a {spec.model.value} "
                                               f"job; sent on to its own queue")
                self.forward(spec)
            except (JobNotFound, InvalidJob) as exc:
                verdict = Refusal(UNKNOWN_JOB, str(exc))
            except redis.RedisError:
                return True  # cannot tell: the task requeues the message on a Redis error
        self.refuse(message, verdict)
        return False

    def _route(self, job_id: str) -> Route:
        if self.routing is None:
            return Route(self.jobs.model_of(job_id))
        return self.routing.route(job_id)

    def _pass_on(self, message: Message, admitted: Admitted, peer: str) -> bool:
        """Pass the job to ``peer`` and acknowledge the message; False if it could not be
        sent (this worker runs the job instead)."""
        assert self.routing is not None
        try:
            self.routing.pass_on(message, admitted.task, admitted.job_id, peer)
        except Exception as exc:  # kombu and redis raise their own; the job runs here
            log.warning("could not pass job %s to %s, running it here: %s", admitted.job_id,
                        peer, exc)
            return False
        message.ack()  # type: ignore[no-untyped-call]
        return True

    def refuse(self, message: Message, refusal: Refusal) -> None:
        """Dead-letter a received message and acknowledge it."""
        headers = message.headers if isinstance(message.headers, dict) else {}
        info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
        letter = DeadLetter.of(
            refusal.reason, refusal.detail, str(info.get("routing_key") or ""),
            _as_bytes(message.body), content_type=message.content_type,
            content_encoding=message.content_encoding, task=headers.get("task"),
            message_id=headers.get("id"), worker=self.worker_id)
        self._keep(letter)
        message.ack()  # type: ignore[no-untyped-call]

    def refuse_raw(self, raw: bytes, queue: str, refusal: Refusal,
                   content_type: object = None) -> None:
        """Dead-letter an item taken off a queue that is not even a broker envelope."""
        self._keep(DeadLetter.of(refusal.reason, refusal.detail, queue, raw,
                                 content_type=content_type, worker=self.worker_id))

    def _keep(self, letter: DeadLetter) -> None:
        log.error("dead letter from %s: %s: %s (%d bytes)", letter.queue or "?", letter.reason,
                  letter.detail, letter.body_size)
        self.on_refused(letter.reason)
        try:
            self.letters.add(letter)
        except redis.ConnectionError:
            raise  # the broker is gone too: the consumer reconnects, the message comes back
        except redis.RedisError:
            # Better to lose one bad message than to crash-loop on it.
            log.exception("could not keep the dead letter; dropping it: %r",
                          letter.body[:200])


def _as_bytes(body: object) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    return repr(body).encode("utf-8", "replace")


def _describe(value: Any) -> str:
    """A short description of a decoded JSON value, safe to log whatever its size."""
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object with {len(value)} keys"
    return _clip(value)


def _clip(value: object, limit: int = 60) -> str:
    if isinstance(value, (str, bytes)) and len(value) > limit:
        value = value[:limit]  # a 50 MB id is never repr'd whole
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _short(exc: Exception) -> str:
    return str(exc)[:200]
