"""Dead letters: broker messages no worker can run, kept aside in Redis for people to read.

A worker that meets a message it cannot decode, or one that does not name a job it could
run, moves it here and acknowledges it, so one bad message can never crash-loop a fleet.
The list is newest first and capped (``ZQ_DEAD_LETTER_MAX``); each entry keeps the start
of the raw body, base64-encoded, and why it was refused.

A sharded fleet (``ZQ_REDIS_SHARDS``) keeps one list per shard, on the shard whose worker
refused the message; ``FleetDeadLetters`` reads (and clears) them all as one.
"""

from __future__ import annotations

import base64
import heapq
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypeVar, cast

import redis

from common.errors import ServiceUnavailable
from common.keys import Keys
from common.webhooks import redact_url

_T = TypeVar("_T")

# Why a message was refused: short, stable codes (a metrics label), from the outermost
# layer of a message inwards.
ENVELOPE = "envelope"  # not a broker envelope: not JSON, not UTF-8, body not decodable
CONTENT_TYPE = "content_type"  # a body that is not JSON (pickle, raw data, text...)
BODY = "body"  # JSON that is not Celery's message shape
UNKNOWN_TASK = "unknown_task"  # a task name this queue does not run
BAD_ARGS = "bad_args"  # not exactly one job id argument
BAD_JOB_ID = "bad_job_id"  # an argument that is not a valid job id
UNKNOWN_JOB = "unknown_job"  # a valid job id with no job record
REJECTED = "rejected"  # Celery itself refused it (a bad ETA, ...)
WRONG_QUEUE = "wrong_queue"  # a job of another model type (sent on to its own queue)
REASONS = (ENVELOPE, CONTENT_TYPE, BODY, UNKNOWN_TASK, BAD_ARGS, BAD_JOB_ID, UNKNOWN_JOB,
           REJECTED, WRONG_QUEUE)

# Bodies are kept up to this size; the original size is recorded.
MAX_BODY_BYTES = 64 * 1024
# Header values (task name, message id) are kept up to this many characters.
MAX_HEADER_CHARS = 256
MAX_DETAIL_CHARS = 1000


@dataclass(frozen=True)
class DeadLetter:
    """One refused message: what it was, where it came from, why, when and who refused it."""

    reason: str
    detail: str
    queue: str
    body_b64: str
    body_size: int
    truncated: bool
    content_type: str | None = None
    content_encoding: str | None = None
    task: str | None = None
    message_id: str | None = None
    worker: str = ""
    at: float = 0.0

    @classmethod
    def of(cls, reason: str, detail: str, queue: str, body: bytes, *,
           content_type: object = None, content_encoding: object = None,
           task: object = None, message_id: object = None, worker: str = "",
           at: float | None = None) -> DeadLetter:
        """A dead letter for ``body``, truncated and with every text field bounded."""
        if reason not in REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}")
        return cls(reason=reason, detail=detail[:MAX_DETAIL_CHARS], queue=queue[:200],
                   body_b64=base64.b64encode(body[:MAX_BODY_BYTES]).decode("ascii"),
                   body_size=len(body), truncated=len(body) > MAX_BODY_BYTES,
                   content_type=_text(content_type), content_encoding=_text(content_encoding),
                   task=_text(task), message_id=_text(message_id), worker=worker,
                   at=time.time() if at is None else at)

    @property
    def body(self) -> bytes:
        """The kept bytes of the body (all of it unless ``truncated``)."""
        return base64.b64decode(self.body_b64)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in Redis and printed by ``zq dead-letters --json``."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeadLetter:
        """Read back a stored entry."""
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def _text(value: object) -> str | None:
    """A header value as bounded text; None stays None."""
    if value is None:
        return None
    text = value if isinstance(value, str) else repr(value)
    return text[:MAX_HEADER_CHARS]


class DeadLetterStore:
    """The capped dead-letter list in Redis, ``<prefix>:dead_letters``, newest first."""

    def __init__(self, client: redis.Redis, prefix: str = "zq", max_len: int = 10_000) -> None:
        if max_len < 1:
            raise ValueError(f"max_len must be at least 1, got {max_len}")
        self.redis = client
        self.key = Keys(prefix).dead_letters
        self.max_len = max_len

    @classmethod
    def from_url(cls, url: str, prefix: str = "zq", max_len: int = 10_000) -> DeadLetterStore:
        """Connect to the Redis at ``url``."""
        return cls(redis.Redis.from_url(url), prefix, max_len)

    def add(self, letter: DeadLetter) -> None:
        """Keep ``letter`` as the newest entry; the oldest beyond the cap are dropped."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lpush(self.key, json.dumps(letter.to_dict()))
        pipe.ltrim(self.key, 0, self.max_len - 1)
        pipe.execute()

    def count(self) -> int:
        """How many dead letters are kept."""
        return int(self.redis.llen(self.key))

    def newest(self, limit: int = 10) -> list[DeadLetter]:
        """Up to ``limit`` entries, newest first; an entry that cannot be read is skipped."""
        if limit < 1:
            return []
        raw = cast(list[Any], self.redis.lrange(self.key, 0, limit - 1))
        letters = []
        for item in raw:
            try:
                letters.append(DeadLetter.from_dict(json.loads(item)))
            except (ValueError, TypeError, KeyError):
                continue
        return letters

    def clear(self) -> int:
        """Remove every entry; returns how many there were."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.llen(self.key)
        pipe.delete(self.key)
        count, _ = pipe.execute()
        return int(count)


@dataclass(frozen=True)
class ShardLetter:
    """A dead letter and the shard (its index in ``ZQ_REDIS_SHARDS``) that keeps it."""

    shard: int
    letter: DeadLetter

    def to_dict(self) -> dict[str, Any]:
        """The letter's JSON form with its ``shard``."""
        return {"shard": self.shard, **self.letter.to_dict()}


class FleetDeadLetters:
    """The dead-letter lists of every shard, read as one: one call per shard per question.

    With one shard it is exactly that shard's ``DeadLetterStore`` (same calls, same errors).
    With several, a shard that cannot be reached raises ``ServiceUnavailable`` naming it:
    a count or a listing that left a shard out would look complete and be wrong.
    """

    def __init__(self, stores: Sequence[DeadLetterStore],
                 names: Sequence[str] | None = None) -> None:
        if not stores:
            raise ValueError("at least one dead-letter store is needed")
        if names is not None and len(names) != len(stores):
            raise ValueError("one name per store")
        self.stores = list(stores)
        self.names = list(names) if names is not None else [""] * len(self.stores)

    @classmethod
    def from_urls(cls, urls: Sequence[str], prefix: str = "zq",
                  max_len: int = 10_000) -> FleetDeadLetters:
        """One store per shard URL (``Settings.shard_urls``), in routing order."""
        return cls([DeadLetterStore.from_url(url, prefix, max_len) for url in urls],
                   [redact_url(url) for url in urls])

    def __len__(self) -> int:
        return len(self.stores)

    def _each(self, read: Callable[[DeadLetterStore], _T]) -> list[_T]:
        if len(self.stores) == 1:
            return [read(self.stores[0])]
        results = []
        for index, (store, name) in enumerate(zip(self.stores, self.names, strict=True)):
            try:
                results.append(read(store))
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                where = f"shard {index}" + (f" ({name})" if name else "")
                raise ServiceUnavailable(f"{where} of ZQ_REDIS_SHARDS cannot be reached: "
                                         f"{exc}") from None
        return results

    def counts(self) -> list[int]:
        """How many dead letters each shard keeps, in shard order."""
        return self._each(DeadLetterStore.count)

    def count(self) -> int:
        """How many dead letters the fleet keeps."""
        return sum(self.counts())

    def newest(self, limit: int = 10) -> list[ShardLetter]:
        """Up to ``limit`` entries over every shard, newest first (by the time refused)."""
        per_shard = self._each(lambda store: store.newest(limit))
        merged = heapq.merge(
            *[[ShardLetter(index, letter) for letter in letters]
              for index, letters in enumerate(per_shard)],
            key=lambda item: -item.letter.at)
        return list(merged)[:max(limit, 0)]

    def clear(self) -> list[int]:
        """Remove every entry on every shard; returns how many each shard had.

        A shard that cannot be reached stops the clearing there (the error names it):
        the shards before it are cleared, the rest are not; run it again.
        """
        return self._each(DeadLetterStore.clear)
