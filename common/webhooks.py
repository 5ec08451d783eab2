"""The webhook outbox: completion calls owed to producers, kept in Redis.

A batch, a campaign run or a single job may name a URL to call when it finishes.
Whoever notices the finish (a worker, usually) calls :meth:`WebhookOutbox.enqueue`:
one Lua script, O(1), no network, so a GPU worker never waits on a receiver. A
separate dispatcher (``zq webhooks``, :mod:`producer.webhooks`) takes due deliveries
and makes the HTTP calls, retrying with backoff.

Keys, under the prefix (built by :mod:`common.keys`; the scripts are
``common/lua/webhook_*.lua``):

* ``{prefix}:webhook:{kind}:{id}`` -- a hash per subject: url, delivery id, status
  (``pending``/``delivered``/``failed``), attempts, last error and status code, times.
  Its existence is what makes a subject's webhook owed at most once, ever.
* ``{prefix}:webhooks:due`` -- a sorted set of ``{kind}:{id}`` scored by the time of the
  next attempt. Claiming a delivery re-scores it to the end of a lease, so a second
  dispatcher cannot take it while the first is sending, and a dispatcher that dies
  mid-send only delays the delivery until the lease runs out (at-least-once).

Every outcome names the attempt it is for, and is ignored unless that is still the
latest attempt: a dispatcher that overran its lease cannot undo a newer attempt's
record.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import redis

from common.errors import InvalidJob
from common.keys import Keys
from common.scripts import load

KINDS = frozenset({"batch", "campaign_run", "job"})
"""What a webhook can be owed for."""

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
MAX_URL_LENGTH = 2048
_URL_RULE = "an http(s) URL with a host, no credentials, at most 2048 characters"


@dataclass(frozen=True)
class Delivery:
    """One webhook owed for a finished subject.

    ``attempts`` counts the attempts started so far; on a delivery returned by
    :meth:`WebhookOutbox.claim_next` it includes the one just claimed, so it is
    that attempt's number (1 for the first). ``delivery_id`` stays the same across
    retries, so a receiver can drop repeats.
    """

    kind: str
    subject_id: str
    url: str
    attempts: int
    delivery_id: str


@dataclass(frozen=True)
class WebhookState:
    """What the outbox recorded about one subject's webhook."""

    kind: str
    subject_id: str
    status: str
    attempts: int
    delivery_id: str
    last_error: str | None
    status_code: int | None
    created_at: float
    finished_at: float | None
    next_attempt_at: float | None


def validate_webhook_url(url: str) -> str:
    """Return ``url`` if it is an http(s) URL a dispatcher can call; else ``InvalidJob``.

    Refused: other schemes, no host, user:password in the URL (it would not be sent),
    whitespace or control characters, a bad port, more than 2048 characters.
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InvalidJob("webhook", _URL_RULE, url)
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        raise InvalidJob("webhook", _URL_RULE, url)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise InvalidJob("webhook", _URL_RULE, url) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise InvalidJob("webhook", _URL_RULE, url)
    if parts.username is not None or parts.password is not None:
        raise InvalidJob("webhook", _URL_RULE, url)
    return url


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: safe to log, unlike its path or query.

    Webhook URLs often carry a token in the query string, and some (Slack-style)
    in the path, so neither is ever logged.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}"


class WebhookOutbox:
    """Webhooks owed and their delivery records; shared by workers and dispatchers."""

    def __init__(self, client: redis.Redis, prefix: str = "zq", record_ttl_s: int = 0) -> None:
        self.redis = client
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.record_ttl_s = record_ttl_s
        self._enqueue = client.register_script(load("webhook_enqueue"))
        self._claim = client.register_script(load("webhook_claim"))
        self._settle = client.register_script(load("webhook_settle"))

    # -- keys ---------------------------------------------------------------
    def record_key(self, kind: str, subject_id: str) -> str:
        """The hash recording one subject's webhook."""
        return self.keys.webhook(kind, subject_id)

    @property
    def due_key(self) -> str:
        """The sorted set of owed deliveries, scored by next attempt time."""
        return self.keys.webhooks_due

    # -- owing ----------------------------------------------------------------
    def enqueue(self, subject_kind: str, subject_id: str, url: str) -> bool:
        """Owe one webhook for a finished subject; False if one was already owed.

        O(1) and network-free apart from one Redis call: safe from a GPU worker.
        ``InvalidJob`` for a bad URL, ``ValueError`` for an unknown kind.
        """
        _check_kind(subject_kind)
        validate_webhook_url(url)
        keys = [self.record_key(subject_kind, subject_id), self.due_key]
        args: list[str | float] = [subject_kind, subject_id, url, uuid.uuid4().hex,
                                   time.time(), _member(subject_kind, subject_id)]
        return bool(self._enqueue(keys=keys, args=args))

    # -- dispatching ----------------------------------------------------------
    def due(self, now: float | None = None, limit: int = 100) -> list[Delivery]:
        """Deliveries whose next attempt time has come (a read-only peek)."""
        now = time.time() if now is None else now
        members = cast(list[object],
                       self.redis.zrangebyscore(self.due_key, "-inf", now, start=0, num=limit))
        found: list[Delivery] = []
        for member in members:
            kind, subject_id = _split(_text(member))
            state = self._fields(kind, subject_id)
            if state.get("status") == PENDING:
                found.append(Delivery(kind, subject_id, state["url"], int(state["attempts"]),
                                      state["delivery_id"]))
        return found

    def claim_next(self, lease_s: float = 60.0, *, now: float | None = None,
                   due_by: float | None = None) -> Delivery | None:
        """Take the next delivery due by ``due_by`` (default now) for one attempt.

        Atomic: two dispatchers never take the same attempt. The delivery stays
        taken for ``lease_s``; if no outcome is recorded by then it is due again.
        """
        now = time.time() if now is None else now
        due_by = now if due_by is None else due_by
        while True:
            members = cast(list[object], self.redis.zrangebyscore(
                self.due_key, "-inf", due_by, start=0, num=16))
            if not members:
                return None
            for raw in members:
                member = _text(raw)
                kind, subject_id = _split(member)
                keys = [self.record_key(kind, subject_id), self.due_key]
                args: list[str | float] = [member, due_by, now + lease_s, now]
                claimed = cast(list[object] | None, self._claim(keys=keys, args=args))
                if claimed:
                    attempt, url, delivery_id = claimed
                    return Delivery(kind, subject_id, _text(url), int(cast(int, attempt)),
                                    _text(delivery_id))
            # Every candidate was taken by someone else (or had ended): look again.

    def retry_later(self, delivery: Delivery, error: str, delay_s: float,
                    status_code: int | None = None, *, now: float | None = None) -> bool:
        """Record a failed attempt and make the delivery due again in ``delay_s``.

        Returns False (and changes nothing) if ``delivery`` is no longer the latest
        attempt or the delivery has ended.
        """
        now = time.time() if now is None else now
        return self._outcome(delivery, "retry", now, now + delay_s, error, status_code)

    def delivered(self, delivery: Delivery, status_code: int, *,
                  now: float | None = None) -> bool:
        """Record that the attempt was acknowledged; the delivery ends."""
        now = time.time() if now is None else now
        return self._outcome(delivery, DELIVERED, now, now, "", status_code)

    def give_up(self, delivery: Delivery, error: str, status_code: int | None = None, *,
                now: float | None = None) -> bool:
        """Record the final failure; the delivery ends without being acknowledged."""
        now = time.time() if now is None else now
        return self._outcome(delivery, FAILED, now, now, error, status_code)

    # -- reading --------------------------------------------------------------
    def state(self, subject_kind: str, subject_id: str) -> WebhookState | None:
        """The recorded state of a subject's webhook; None if none was ever owed."""
        fields = self._fields(subject_kind, subject_id)
        if not fields:
            return None
        code = fields.get("status_code")
        return WebhookState(
            kind=fields["kind"],
            subject_id=fields["id"],
            status=fields["status"],
            attempts=int(fields["attempts"]),
            delivery_id=fields["delivery_id"],
            last_error=fields.get("last_error"),
            status_code=int(code) if code else None,
            created_at=float(fields["created_at"]),
            finished_at=_float(fields.get("finished_at")),
            next_attempt_at=_float(fields.get("next_attempt_at")),
        )

    def _fields(self, kind: str, subject_id: str) -> dict[str, str]:
        raw = cast(dict[object, object], self.redis.hgetall(self.record_key(kind, subject_id)))
        return {_text(k): _text(v) for k, v in raw.items()}

    def _outcome(self, delivery: Delivery, outcome: str, now: float, next_at: float,
                 error: str, status_code: int | None) -> bool:
        keys = [self.record_key(delivery.kind, delivery.subject_id), self.due_key]
        args: list[str | float | int] = [
            _member(delivery.kind, delivery.subject_id), delivery.attempts, outcome, now,
            next_at, error, "" if status_code is None else status_code, self.record_ttl_s]
        return bool(self._settle(keys=keys, args=args))


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"webhook kind must be one of {sorted(KINDS)}, got {kind!r}")


def _member(kind: str, subject_id: str) -> str:
    return f"{kind}:{subject_id}"


def _split(member: str) -> tuple[str, str]:
    kind, _, subject_id = member.partition(":")
    return kind, subject_id


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: str | None) -> float | None:
    return float(value) if value else None
