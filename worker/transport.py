"""The worker's Redis transport: kombu's, except that an item on a queue that is not a
broker envelope becomes a dead letter instead of an exception in the worker's event loop.

kombu pops an item off the queue list and parses it (UTF-8, JSON, the envelope's
``properties``, a base64 body) before anything else sees it; a parse error there escapes
into Celery as an unrecoverable error and the popped item is simply gone. ``Channel``
parses the item itself, keeps what it cannot parse as a dead letter, and fills in the
bookkeeping a non-Python producer may leave out (``delivery_tag``, ``delivery_info``).
The two methods that pop items are kombu 5.x's, with only that parse step changed; the
hostile-message integration tests exercise them against a real Redis.
"""

from __future__ import annotations

import uuid
from queue import Empty
from typing import Any

from kombu.connection import Connection
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from common.deadletters import ENVELOPE
from worker.intake import Refusal


def _refuse_raw(item: bytes, queue: str, detail: str, content_type: object = None) -> None:
    from worker.celery_app import runtime

    runtime().intake.refuse_raw(item, queue, Refusal(ENVELOPE, detail), content_type)


class Channel(kombu_redis.Channel):
    """A Redis channel that dead-letters items it cannot turn into a message."""

    def envelope(self, item: bytes, queue: str) -> dict[str, Any] | None:
        """The parsed envelope of a popped item, or None once it was dead-lettered."""
        try:
            text = item.decode("utf-8") if isinstance(item, bytes) else str(item)
        except UnicodeDecodeError as exc:
            _refuse_raw(item, queue, f"not UTF-8: {exc}")
            return None
        try:
            payload = loads(text)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            _refuse_raw(item, queue, f"not JSON: {str(exc)[:200]}")
            return None
        if not isinstance(payload, dict):
            _refuse_raw(item, queue, f"a JSON {type(payload).__name__}, not an envelope object")
            return None
        content_type = payload.get("content-type")
        properties = payload.get("properties")
        if not isinstance(properties, dict):
            _refuse_raw(item, queue, "the envelope has no properties object", content_type)
            return None
        if not isinstance(payload.get("headers"), (dict, type(None))):
            _refuse_raw(item, queue, "the envelope's headers are not an object", content_type)
            return None
        tag = properties.get("delivery_tag")
        if not isinstance(tag, str) or not tag:
            properties["delivery_tag"] = str(uuid.uuid4())
        info = properties.get("delivery_info")
        if not isinstance(info, dict):
            info = properties["delivery_info"] = {}
        info.setdefault("exchange", "")
        info.setdefault("routing_key", queue)
        try:
            message = self.Message(payload, channel=self)  # type: ignore[no-untyped-call]
        except Exception as exc:  # a bad body encoding: binascii, unknown codec...
            _refuse_raw(item, queue, f"the body cannot be decoded: {type(exc).__name__}: "
                                     f"{str(exc)[:200]}", content_type)
            return None
        if message.errors:
            _refuse_raw(item, queue, "the body cannot be decoded", content_type)
            return None
        return payload

    def _brpop_read(self, **options: Any) -> Any:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP",
                                                        **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]  # type: ignore[no-untyped-call]
            self._queue_cycle.rotate(dest)
            payload = self.envelope(item, dest)
            if payload is not None:
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))  # type: ignore[no-untyped-call]
                if item:
                    self._touch(client, queue)
                    payload = self.envelope(item, queue)
                    if payload is not None:
                        return payload
            self._touch(client, queue)
            raise Empty()

    def _touch(self, client: Any, queue: str) -> None:
        update = getattr(self, "_maybe_update_queues_expire", None)
        if update is not None:
            update(client, queue)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with ``Channel``; ``broker_transport`` of the worker app."""

    Channel = Channel


def worker_transport_config(broker_url: str) -> dict[str, Any]:
    """The Celery options that make a worker app use ``Transport`` for a Redis broker URL.

    kombu picks its TLS defaults from the URL scheme (``rediss``); with the transport
    named explicitly it no longer sees the scheme, so those defaults are carried over.
    """
    scheme = broker_url.partition("://")[0].lower()
    if scheme not in ("redis", "rediss"):
        return {}
    config: dict[str, Any] = {"broker_transport": f"{__name__}:Transport"}
    ssl = Connection(broker_url).ssl  # type: ignore[no-untyped-call]
    if ssl:
        config["broker_use_ssl"] = ssl
    return config
