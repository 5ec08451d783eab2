"""Waiting without polling: the Redis pub/sub channels the job store publishes on.

The Lua that ends a job (``common/lua/ending_lib.lua``) publishes on these channels, their
names built by :mod:`common.keys`:

* ``{prefix}:ended:{job_id}`` -- the job's record (a JSON array of field, value, ...),
  once it is terminal (again, harmlessly, when a later webhook or batch settles it);
  published only while someone listens;
* ``{prefix}:batch-progress:{batch_id}`` -- the id of a job of that batch that ended,
  as the batch's counters change (:meth:`common.batches.BatchStore.progress`);
* ``{prefix}:webhooks:wake`` -- a subject id, whenever a webhook becomes owed.

Pub/sub is at-most-once: a message published while nobody is subscribed, or while a
subscriber reconnects, is gone. Waiters therefore subscribe first, then read the record
(a job that ended before the subscription is seen by the read), and re-read on a slow
fallback interval, so a lost message costs seconds, never a hang. Channels are per
subject so that publishing costs O(1) when nobody listens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from types import TracebackType

import redis
from redis.client import PubSub

from common.keys import Keys

FALLBACK_POLL_S = 2.0
"""Default re-read interval of a waiter, in case a pushed message was lost."""

_CONFIRM_TIMEOUT_S = 10.0


def job_channel(prefix: str, job_id: str) -> str:
    """Where the job's record is published once it is terminal (while someone listens)."""
    return Keys(prefix).ended(job_id)


def batch_channel(prefix: str, batch_id: str) -> str:
    """Where the id of each of a batch's jobs that ends is published."""
    return Keys(prefix).batch_progress(batch_id)


def webhook_wake_channel(prefix: str) -> str:
    """Where a subject id is published when a webhook becomes owed."""
    return Keys(prefix).webhooks_wake


def ended_record(data: str) -> dict[str, str] | None:
    """The record fields an ``ended`` message carries; None if it carries none."""
    try:
        flat = json.loads(data)
    except ValueError:
        return None
    if not isinstance(flat, list) or len(flat) % 2 or not all(isinstance(v, str) for v in flat):
        return None
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


class Subscription:
    """One pub/sub connection subscribed to a set of channels (however many).

    Use it as a context manager, or call ``close``: the connection is closed, not
    returned to the pool in subscribed state.
    """

    def __init__(self, client: redis.Redis, channels: Iterable[str]) -> None:
        self.client = client
        self.channels = list(dict.fromkeys(channels))
        self._pubsub: PubSub | None = None
        self._early: list[tuple[str, str]] = []

    def __enter__(self) -> Subscription:
        self.open()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def open(self) -> None:
        """Subscribe, and return only once Redis confirmed every channel.

        Only a confirmed subscription is sure to see a publish that follows a read made
        on another connection, so callers read their records after this.
        """
        self.close()
        pubsub = self.client.pubsub()  # type: ignore[no-untyped-call]
        self._pubsub = pubsub
        if self.channels:
            pubsub.subscribe(*self.channels)
            self._confirm(pubsub, {"subscribe": len(self.channels)})

    def watch(self, channels: Iterable[str]) -> None:
        """Subscribe to exactly ``channels`` (confirmed), keeping the connection.

        A connection kept between waits saves Redis a connection's set-up and tear-down
        per wait (several times what subscribing costs); ``watch([])`` leaves it idle.
        """
        wanted = list(dict.fromkeys(channels))
        if self._pubsub is None:
            self.channels = wanted
            if wanted:
                self.open()
            return
        dropped = [channel for channel in self.channels if channel not in wanted]
        added = [channel for channel in wanted if channel not in self.channels]
        self.channels = wanted
        try:
            if dropped:
                self._pubsub.unsubscribe(*dropped)  # type: ignore[no-untyped-call]
            if added:
                self._pubsub.subscribe(*added)
            self._confirm(self._pubsub, {"unsubscribe": len(dropped), "subscribe": len(added)})
        except (redis.ConnectionError, redis.TimeoutError):
            self.close()  # the next wait subscribes afresh
            if wanted:
                self.open()

    def _confirm(self, pubsub: PubSub, expected: dict[str, int]) -> None:
        """Read until Redis confirmed each (un)subscription; keep messages meanwhile."""
        owed, deadline = dict(expected), time.monotonic() + _CONFIRM_TIMEOUT_S
        while any(owed.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise redis.TimeoutError("pub/sub subscription not confirmed")
            message = pubsub.get_message(timeout=remaining)
            if message is None:
                continue
            if message["type"] in owed:
                owed[message["type"]] -= 1
            elif message["type"] == "message":
                self._early.append((_text(message["channel"]), _text(message["data"])))

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._pubsub is not None:
            self._pubsub.close()
            self._pubsub = None

    def wait(self, timeout_s: float) -> list[tuple[str, str]] | None:
        """Block up to ``timeout_s`` for messages; every (channel, data) already there.

        An empty list: nothing came in time. None: the connection was lost (messages
        may have been missed, so re-read everything); the next call subscribes again.
        """
        if self._early:
            early, self._early = self._early, []
            return early
        try:
            if self._pubsub is None:
                self.open()
                return None  # whatever was published while unsubscribed is unknown
            if not self.channels:
                time.sleep(max(timeout_s, 0.0))
                return []
            received: list[tuple[str, str]] = []
            message = self._pubsub.get_message(timeout=max(timeout_s, 0.0))
            while message is not None:
                if message["type"] == "message":
                    received.append((_text(message["channel"]), _text(message["data"])))
                message = self._pubsub.get_message(timeout=0.0)
            return received
        except (redis.ConnectionError, redis.TimeoutError):
            self.close()
            # Not at once: a caller looping on a Redis that refuses us would spin.
            time.sleep(min(max(timeout_s, 0.0), 1.0))
            return None
