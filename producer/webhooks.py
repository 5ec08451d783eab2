"""``zq webhooks``: the dispatcher that calls completion webhooks, and their signature.

Workers only record that a webhook is owed (:class:`common.webhooks.WebhookOutbox`);
this light process (no torch) makes the HTTP calls, so a slow or dead receiver never
holds a GPU. Each call is a JSON POST::

    {"event": "batch.finished", "id": "<subject id>", "delivery_attempt": 1,
     "data": {...the subject's results manifest...}}

with headers ``X-Zq-Event``, ``X-Zq-Delivery`` (the same id on every retry of one
delivery: receivers drop repeats by it) and ``X-Zq-Signature``, and the Standard Webhooks
headers ``webhook-id`` (that same delivery id), ``webhook-timestamp`` and
``webhook-signature`` (https://www.standardwebhooks.com).

Verifying a webhook (receivers)
-------------------------------
``X-Zq-Signature: t=<unix time>,v1=<hex>`` where ``<hex>`` is the HMAC-SHA256, keyed
with the shared secret (``ZQ_WEBHOOK_SECRET``), of the bytes ``b"<t>." + raw body``.
Check it against the raw request body, before parsing the JSON, with
:func:`verify` or its equivalent: recompute, compare in constant time, and refuse a
``t`` more than a few minutes from now (that stops a captured request being replayed
later). Several ``v1=`` entries may appear; any one matching is enough.

The same request is also signed the Standard Webhooks way, so a stock library
(``standardwebhooks`` on PyPI and npm, and its ports) can check it:
``webhook-signature: v1,<base64>``, the HMAC-SHA256 of ``"<webhook-id>.<webhook-timestamp>."
+ raw body`` keyed with :func:`standard_key` of the secret: a ``whsec_<base64>`` secret is
the bytes it encodes (what those libraries do with it), any other secret its own UTF-8
bytes. A receiver therefore configures ``ZQ_WEBHOOK_SECRET`` itself when it starts with
``whsec_``, and ``"whsec_" + base64(ZQ_WEBHOOK_SECRET)`` otherwise (:func:`standard_secret`).
``X-Zq-Signature`` is always keyed with the secret's UTF-8 bytes as written, so receivers
that check it are unaffected by the choice of secret.

Any 2xx answer acknowledges the delivery. Anything else, a timeout, a connection
error or a name that does not resolve is retried with exponential backoff and jitter,
up to ``max_attempts``; then the delivery is given up and recorded as failed (and
logged on ``zq.audit``). Redirects are not followed. URLs are logged as
``scheme://host[:port]`` only.

With several shards (``ZQ_REDIS_SHARDS``) a webhook is owed in the outbox of its subject's
shard, so one ``zq webhooks`` process runs a dispatch loop per shard, each in a thread of
its own woken by its own shard's wake channel (:func:`run_shards`): a shard whose Redis is
down is retried on its own while the others keep delivering.

Before each attempt the URL is vetted again (:class:`common.webhook_policy.WebhookPolicy`:
public addresses only, unless ``ZQ_WEBHOOK_ALLOW`` allows more) and the call goes to
the address just checked (:mod:`producer.webhook_http`). A refused target is given up
at once, recorded as failed with ``refused: <rule>``, never retried and never connected to.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import redis

from common.audit import audit_log, configure_audit_logging
from common.errors import ConfigError, InvalidJob
from common.push import Subscription, webhook_wake_channel
from common.status import JobStatus
from common.webhook_policy import (
    WebhookPolicy,
    WebhookRefused,
    WebhookTarget,
    WebhookUnresolvable,
)
from common.webhooks import Delivery, WebhookOutbox, redact_url
from producer.webhook_http import ConnectFailed, post

if TYPE_CHECKING:
    from common.shards import Shard
    from producer.client import Client

log = logging.getLogger("zq.webhooks")

SIGNATURE_HEADER = "X-Zq-Signature"
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"
SECRET_ENV = "ZQ_WEBHOOK_SECRET"
USER_AGENT = "zq-webhooks/1"
IDLE_POLL_S = 5.0
"""Longest idle rest of ``run_forever``: owed webhooks wake it sooner (the wake channel)."""
_STOP_CHECK_S = 0.5
_MAX_ERROR_CHARS = 300
_JOIN_S = 5.0
"""How long a stopping multi-shard dispatcher waits for its loops' attempts in flight."""

BodyBuilder = Callable[["Client", str], dict[str, Any]]


# -- signing -------------------------------------------------------------------
def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Zq-Signature`` value for ``body`` sent at ``timestamp`` (unix seconds)."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def verify(secret: bytes, body: bytes, header: str, tolerance_s: float = 300,
           now: float | None = None) -> bool:
    """Whether ``header`` is a valid signature of the raw ``body`` under ``secret``.

    False for a malformed header, a wrong signature (tampered body, other secret) or
    a timestamp more than ``tolerance_s`` from ``now`` (a replay).
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            return False
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                return False
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign(secret, body, timestamp).rpartition("v1=")[2]
    return any(hmac.compare_digest(expected, candidate) for candidate in candidates)


def standard_key(secret: bytes) -> bytes:
    """The HMAC key of the Standard Webhooks signature for ``ZQ_WEBHOOK_SECRET`` = ``secret``.

    ``whsec_<base64>``: the bytes it encodes, as the Standard Webhooks libraries read such a
    secret (padding may be left off). Anything else: ``secret`` itself, its UTF-8 bytes.
    ``ConfigError`` for a ``whsec_`` secret that is not base64 or encodes nothing.
    """
    prefix = STANDARD_SECRET_PREFIX.encode()
    if not secret.startswith(prefix):
        return secret
    encoded = secret[len(prefix):]
    try:
        key = base64.b64decode(encoded + b"=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not key:
        raise ConfigError(f"{SECRET_ENV} starts with {STANDARD_SECRET_PREFIX!r} but the rest "
                          "is not a non-empty base64 value")
    return key


def standard_secret(secret: bytes) -> str:
    """The ``whsec_...`` string a Standard Webhooks receiver configures for ``secret``.

    ``secret`` unchanged when it is already ``whsec_``; otherwise its UTF-8 bytes in base64.
    """
    if secret.startswith(STANDARD_SECRET_PREFIX.encode()):
        return secret.decode()
    return STANDARD_SECRET_PREFIX + base64.b64encode(secret).decode()


def sign_standard(key: bytes, delivery_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,`` and the base64 HMAC-SHA256 under ``key``.

    ``key`` is :func:`standard_key` of the secret; the signed bytes are
    ``"<delivery_id>.<timestamp>." + body``.
    """
    message = f"{delivery_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode()


def verify_standard(key: bytes, body: bytes, headers: Mapping[str, str],
                    tolerance_s: float = 300, now: float | None = None) -> bool:
    """Whether ``headers`` carry a valid Standard Webhooks signature of the raw ``body``.

    ``key`` as from :func:`standard_key`; header names in any case. False for a missing
    or malformed header, no matching ``v1`` signature among the space-separated ones, or
    a timestamp more than ``tolerance_s`` from ``now``.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    delivery_id = lowered.get(STANDARD_ID_HEADER, "")
    stamp = lowered.get(STANDARD_TIMESTAMP_HEADER, "")
    signatures = lowered.get(STANDARD_SIGNATURE_HEADER, "")
    if not (delivery_id and stamp.isdigit() and signatures):
        return False
    timestamp = int(stamp)
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = sign_standard(key, delivery_id, timestamp, body)
    return any(hmac.compare_digest(expected, candidate)
               for candidate in signatures.split(" ") if candidate.startswith("v1,"))


# -- sending -------------------------------------------------------------------
class Dispatcher:
    """Sends due webhooks from an outbox; any number may run on one outbox at once.

    ``policy`` vets each URL right before its call (public addresses only by default:
    pass ``WebhookPolicy(settings.webhook_allow)`` to honour the allow-list); ``tls``
    is the context for https receivers (the system's trusted CAs by default). ``where``
    names the outbox's shard in the dispatcher's Redis warnings (nothing with one shard).
    """

    def __init__(self, outbox: WebhookOutbox, body_for: Callable[[Delivery], dict[str, Any]],
                 secret: bytes, timeout_s: float = 10.0, max_attempts: int = 8,
                 backoff_base_s: float = 2.0, backoff_max_s: float = 600.0,
                 lease_s: float | None = None, rng: random.Random | None = None,
                 policy: WebhookPolicy | None = None,
                 tls: ssl.SSLContext | None = None, where: str = "") -> None:
        if not secret:
            raise ConfigError("a webhook secret is required")
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.outbox = outbox
        self.body_for = body_for
        self.secret = secret
        self.standard_key = standard_key(secret)
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        # urllib's timeout is per socket operation, so a trickling receiver can hold a
        # call longer than timeout_s; the lease leaves room before another dispatcher
        # may take the delivery again.
        self.lease_s = lease_s if lease_s is not None else max(60.0, timeout_s * 6)
        self._rng = rng or random.Random()
        self.policy = policy or WebhookPolicy()
        self.tls = tls
        self.where = where

    def backoff_s(self, attempt: int) -> float:
        """Delay after failed attempt ``attempt`` (1-based): doubling, jittered, capped."""
        ceiling = min(self.backoff_max_s, self.backoff_base_s * 2 ** min(attempt - 1, 60))
        return self._rng.uniform(ceiling / 2, ceiling)

    def run_once(self) -> int:
        """Make one attempt at every delivery due now; returns how many were attempted.

        Retries scheduled meanwhile wait for a later call, even when already due.
        """
        started = time.time()
        attempted = 0
        while (delivery := self.outbox.claim_next(self.lease_s, due_by=started)) is not None:
            self.attempt(delivery)
            attempted += 1
        return attempted

    def run_forever(self, poll_s: float = IDLE_POLL_S, stop: threading.Event | None = None
                    ) -> None:
        """Dispatch until ``stop`` is set; when nothing is due, sleep until something is.

        Woken by the wake channel the job store publishes on when a webhook becomes owed,
        or when the earliest scheduled retry falls due; ``poll_s`` is the longest idle
        rest, the fallback for a wake that was lost or a delivery owed without one.
        ``stop`` is noticed within a fraction of a second.
        """
        stop = stop or threading.Event()
        # Opened by its first wait (which then reports it as dropped, so the outbox is
        # looked at again once subscribed): a Redis down at start is retried, not fatal.
        wake = Subscription(self.outbox.redis, [webhook_wake_channel(self.outbox.prefix)])
        try:
            while not stop.is_set():
                try:
                    if self.run_once() > 0:
                        continue
                    rest_until = time.monotonic() + min(poll_s, self._until_next_due())
                except redis.RedisError as exc:
                    log.warning("webhooks%s: redis unavailable, retrying: %s",
                                f" ({self.where})" if self.where else "", exc)
                    rest_until = time.monotonic() + min(poll_s, 1.0)
                while not stop.is_set() and (left := rest_until - time.monotonic()) > 0:
                    # Slices, so a stop set from another thread is not kept waiting.
                    if wake.wait(min(left, _STOP_CHECK_S)) != []:
                        break  # woken (or the connection dropped): look at the outbox
        finally:
            wake.close()

    def _until_next_due(self) -> float:
        """Seconds until the earliest owed delivery is due (0 if one already is)."""
        first = self.outbox.redis.zrange(self.outbox.due_key, 0, 0, withscores=True)
        if not first:
            return float("inf")
        return max(0.0, float(first[0][1]) - time.time())

    def attempt(self, delivery: Delivery) -> bool:
        """Make one claimed attempt and record its outcome; True if acknowledged."""
        if delivery.attempts > self.max_attempts:
            self._give_up(delivery, "max attempts reached", None)
            return False
        try:
            target = self.policy.vet(delivery.url)
        except WebhookUnresolvable as exc:  # DNS trouble may pass: retried
            return self._failed(delivery, _short(f"connection: {exc.limit}"), None)
        except InvalidJob as exc:  # refused (or malformed): it will not get better
            rule = exc.rule if isinstance(exc, WebhookRefused) else "bad url"
            log.warning("webhook %s %s to %s refused (%s): not sent", delivery.kind,
                        delivery.subject_id, redact_url(delivery.url), rule)
            self._give_up(delivery, _short(f"refused: {exc.limit}"), None)
            return False
        try:
            data = self.body_for(delivery)
            body = self._body(delivery, data)
        except Exception as exc:  # a builder's bug or a missing subject: retried
            return self._failed(delivery, _short(f"body: {type(exc).__name__}: {exc}"), None)
        status, error = self._post(target, delivery, body)
        if error is None:
            self.outbox.delivered(delivery, status or 0)
            _audit("webhook_delivered", delivery, status_code=status)
            return True
        return self._failed(delivery, error, status)

    def _body(self, delivery: Delivery, data: dict[str, Any]) -> bytes:
        message = {"event": f"{delivery.kind}.finished", "id": delivery.subject_id,
                   "delivery_attempt": delivery.attempts, "data": data}
        return json.dumps(message, sort_keys=True, separators=(",", ":"),
                          default=str).encode()

    def _post(self, target: WebhookTarget, delivery: Delivery,
              body: bytes) -> tuple[int | None, str | None]:
        """POST ``body``; (status code, None) if acknowledged, else (code or None, error)."""
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "X-Zq-Event": f"{delivery.kind}.finished",
            "X-Zq-Delivery": delivery.delivery_id,
            SIGNATURE_HEADER: sign(self.secret, body, timestamp),
            STANDARD_ID_HEADER: delivery.delivery_id,
            STANDARD_TIMESTAMP_HEADER: str(timestamp),
            STANDARD_SIGNATURE_HEADER: sign_standard(
                self.standard_key, delivery.delivery_id, timestamp, body),
        }
        try:
            status = post(target, body, headers, self.timeout_s, self.tls)
        except ConnectFailed as exc:
            return None, _short(f"connection: {exc}")
        except TimeoutError:
            return None, f"timed out after {self.timeout_s}s"
        except Exception as exc:  # OSError, http.client.HTTPException and the like
            return None, _short(f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return status, None
        return status, f"HTTP {status}"

    def _failed(self, delivery: Delivery, error: str, status: int | None) -> bool:
        if delivery.attempts >= self.max_attempts:
            self._give_up(delivery, error, status)
            return False
        delay = self.backoff_s(delivery.attempts)
        log.warning("webhook %s %s to %s: attempt %d failed (%s); retry in %.1fs",
                    delivery.kind, delivery.subject_id, redact_url(delivery.url),
                    delivery.attempts, error, delay)
        self.outbox.retry_later(delivery, error, delay, status)
        return False

    def _give_up(self, delivery: Delivery, error: str, status: int | None) -> None:
        if self.outbox.give_up(delivery, error, status):
            _audit("webhook_failed", delivery, error=error, status_code=status)


def run_shards(dispatchers: Sequence[Dispatcher], poll_s: float = IDLE_POLL_S,
               stop: threading.Event | None = None) -> None:
    """Run each dispatcher's ``run_forever`` in a thread of its own until ``stop`` is set.

    One per shard: each waits on its own shard's wake channel and rides out its own
    Redis's outages (as ``run_forever`` does), so one shard down delays none of the others.
    A loop ending any other way (a bug) stops them all and is raised here, as it would be
    by a lone ``run_forever``. Interrupted (``KeyboardInterrupt``), the loops are stopped
    and given a moment to settle the attempt they are making.
    """
    stop = stop or threading.Event()
    failures: list[BaseException] = []

    def loop(dispatcher: Dispatcher) -> None:
        try:
            dispatcher.run_forever(poll_s, stop)
        except BaseException as exc:
            log.error("webhooks (%s): dispatch loop ended: %s: %s", dispatcher.where,
                      type(exc).__name__, exc)
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=loop, args=(dispatcher,), daemon=True,
                                name=f"zq-webhooks-{index}")
               for index, dispatcher in enumerate(dispatchers)]
    try:
        for thread in threads:
            thread.start()
        while not stop.is_set():
            stop.wait(_STOP_CHECK_S)
    finally:
        stop.set()
        deadline = time.monotonic() + _JOIN_S
        for thread in threads:
            if thread.ident is not None:
                thread.join(max(0.0, deadline - time.monotonic()))
    if failures:
        raise failures[0]


def run_shards_once(dispatchers: Sequence[Dispatcher]) -> int:
    """``run_once`` on each dispatcher; how many were attempted in all.

    A shard whose Redis fails is logged and passed over, so the others still send; the
    first such error is raised once every shard has had its turn.
    """
    attempted = 0
    errors: list[redis.RedisError] = []
    for dispatcher in dispatchers:
        try:
            attempted += dispatcher.run_once()
        except redis.RedisError as exc:
            log.warning("webhooks (%s): redis unavailable: %s", dispatcher.where, exc)
            errors.append(exc)
    if errors:
        log.warning("webhooks: %d attempted on the other shards", attempted)
        raise errors[0]
    return attempted


def _audit(event: str, delivery: Delivery, **fields: Any) -> None:
    record = {"ts": round(time.time(), 6), "event": event, "subject_kind": delivery.kind,
              "subject_id": delivery.subject_id, "delivery_id": delivery.delivery_id,
              "attempts": delivery.attempts, "target": redact_url(delivery.url), **fields}
    audit_log.info(json.dumps(record, sort_keys=True, default=str))


def _short(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


# -- bodies ----------------------------------------------------------------------
def job_body(client: Client, job_id: str) -> dict[str, Any]:
    """A single job's webhook data: its public record, plus a presigned ``url`` if it succeeded.

    Built at each attempt, so a retry carries a fresh (unexpired) URL.
    """
    record = client.status(job_id)
    data = record.to_public()
    if record.status is JobStatus.SUCCEEDED and record.image is not None:
        data["url"] = client.url(job_id)
    return data


def batch_body(client: Client, batch_id: str) -> dict[str, Any]:
    """A finished batch's webhook data: counts and the results manifest, fresh URLs."""
    from producer.batch import Batches

    batches = Batches(client)
    results = batches.results(batch_id)
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    return {"batch_id": batch_id, "finished_at": batches.store(batch_id).finished_at(batch_id),
            "counts": counts, "results": [dataclasses.asdict(r) for r in results]}


BODY_BUILDERS: dict[str, BodyBuilder] = {
    "job": job_body, "batch": batch_body, "campaign_run": batch_body}
"""Webhook data per subject kind; a kind without a builder sends just its kind and id."""


def body_from_registry(client: Client) -> Callable[[Delivery], dict[str, Any]]:
    """The ``body_for`` the CLI uses: the kind's builder from ``BODY_BUILDERS``."""

    def body_for(delivery: Delivery) -> dict[str, Any]:
        builder = BODY_BUILDERS.get(delivery.kind)
        if builder is None:
            return {"kind": delivery.kind, "id": delivery.subject_id}
        return builder(client, delivery.subject_id)

    return body_for


def secret_from_env(env: dict[str, str] | None = None) -> bytes:
    """``ZQ_WEBHOOK_SECRET`` as bytes; ``ConfigError`` if it is missing or empty.

    Also ``ConfigError`` for a ``whsec_`` secret whose rest is not base64
    (:func:`standard_key`), so a bad one stops the dispatcher at start.
    """
    value = (os.environ if env is None else env).get(SECRET_ENV, "")
    if not value:
        raise ConfigError(f"{SECRET_ENV} must be set: the shared secret webhooks are "
                          "signed with (receivers verify X-Zq-Signature with it)")
    secret = value.encode()
    standard_key(secret)
    return secret


# -- command line ----------------------------------------------------------------
def add_command(commands: Any) -> None:
    """Register ``zq webhooks``."""
    command = commands.add_parser(
        "webhooks", help="send completion webhooks (signed with ZQ_WEBHOOK_SECRET)")
    command.add_argument("--poll", type=float, default=IDLE_POLL_S,
                         help="longest idle rest in seconds (owed webhooks wake it sooner)")
    command.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP call")
    command.add_argument("--max-attempts", type=int, default=8)
    command.add_argument("--backoff-base", type=float, default=2.0, help="first retry delay")
    command.add_argument("--backoff-max", type=float, default=600.0, help="longest delay")
    command.add_argument("--once", action="store_true", help="send what is due, then exit")
    command.set_defaults(handler=run_webhooks)


def run_webhooks(client: Client, args: argparse.Namespace) -> int:
    """Run the dispatcher with the client's settings (``zq`` passes a producer client).

    With several shards: a dispatcher per shard, all in this process (:func:`run_shards`).
    """
    secret = secret_from_env()
    configure_audit_logging()
    options: dict[str, Any] = {
        "timeout_s": args.timeout, "max_attempts": args.max_attempts,
        "backoff_base_s": args.backoff_base, "backoff_max_s": args.backoff_max,
        "policy": WebhookPolicy(client.settings.webhook_allow)}
    if len(client.settings.shard_urls) > 1:
        return _run_sharded(shard_dispatchers(client, secret, **options), args)
    outbox = client.jobs.outbox  # with the retention time: settled records expire
    dispatcher = Dispatcher(outbox, body_from_registry(client), secret, **options)
    if args.once:
        print(f"zq webhooks: {dispatcher.run_once()} attempted", flush=True)
        return 0
    print("zq webhooks: dispatching", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        dispatcher.run_forever(args.poll)
    return 0


def shard_dispatchers(client: Client, secret: bytes, **options: Any) -> list[Dispatcher]:
    """A dispatcher per shard of ``client.shards``, in shard order.

    Each drains its shard's outbox and builds bodies from that shard's records (a
    subject's webhook is owed on the shard holding it), through a client bound to that
    shard alone, so a body never waits on another shard's Redis.
    """
    dispatchers = []
    for shard in client.shards:
        outbox = shard.jobs.outbox
        where = f"shard {shard.index} {redact_url(shard.url)}"
        dispatchers.append(Dispatcher(outbox, body_from_registry(_shard_client(client, shard)),
                                      secret, where=where, **options))
    return dispatchers


def _shard_client(client: Client, shard: Shard) -> Client:
    """A client of one shard's Redis (``shard.jobs``), sharing ``client``'s object store."""
    from producer.client import Client

    settings = replace(client.settings, redis_url=shard.url, redis_shards=())
    return Client(settings, jobs=shard.jobs, store=client.store)


def _run_sharded(dispatchers: list[Dispatcher], args: argparse.Namespace) -> int:
    if args.once:
        print(f"zq webhooks: {run_shards_once(dispatchers)} attempted", flush=True)
        return 0
    print(f"zq webhooks: dispatching ({len(dispatchers)} shards)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        run_shards(dispatchers, args.poll)
    return 0
