"""Webhook signatures (HMAC-SHA256 over timestamp and body), URL rules and redaction."""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import random
import threading
import time
from typing import Any, cast

import pytest
import redis

from common.errors import ConfigError, InvalidJob
from common.webhooks import WebhookOutbox, redact_url, validate_webhook_url
from producer.webhooks import (
    Dispatcher,
    run_shards,
    run_shards_once,
    secret_from_env,
    sign,
    sign_standard,
    standard_key,
    standard_secret,
    verify,
    verify_standard,
)
from tests.conftest import require

SECRET = b"whsec-test"
BODY = b'{"event":"batch.finished","id":"b1"}'
NOW = 1_700_000_000


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    header = sign(SECRET, BODY, NOW)
    expected = hmac.new(SECRET, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"


def test_round_trip_verifies() -> None:
    assert verify(SECRET, BODY, sign(SECRET, BODY, NOW), now=NOW)
    assert verify(SECRET, BODY, sign(SECRET, BODY, NOW), now=NOW + 299)


def test_tampered_body_is_rejected() -> None:
    header = sign(SECRET, BODY, NOW)
    assert not verify(SECRET, BODY.replace(b"b1", b"b2"), header, now=NOW)
    assert not verify(SECRET, BODY + b" ", header, now=NOW)


def test_wrong_secret_is_rejected() -> None:
    assert not verify(b"another-secret", BODY, sign(SECRET, BODY, NOW), now=NOW)


def test_stale_or_future_timestamp_is_rejected() -> None:
    header = sign(SECRET, BODY, NOW)
    assert not verify(SECRET, BODY, header, tolerance_s=300, now=NOW + 301)
    assert not verify(SECRET, BODY, header, tolerance_s=300, now=NOW - 301)
    assert verify(SECRET, BODY, header, tolerance_s=1000, now=NOW + 301)


def test_moving_the_timestamp_breaks_the_signature() -> None:
    digest = sign(SECRET, BODY, NOW).partition(",v1=")[2]
    assert not verify(SECRET, BODY, f"t={NOW + 100},v1={digest}", now=NOW + 100)


@pytest.mark.parametrize("header", [
    "", "garbage", f"t={NOW}", "v1=abc", f"t=soon,v1={'0' * 64}", f"t={NOW},v1",
])
def test_malformed_headers_are_rejected(header: str) -> None:
    assert not verify(SECRET, BODY, header, now=NOW)


def test_any_matching_v1_is_enough_for_secret_rotation() -> None:
    old = sign(b"old-secret", BODY, NOW).partition(",v1=")[2]
    new = sign(SECRET, BODY, NOW).partition(",v1=")[2]
    assert verify(SECRET, BODY, f"t={NOW},v1={old},v1={new}", now=NOW)
    assert not verify(SECRET, BODY, f"t={NOW},v1={old}", now=NOW)


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8080/hook",
    "https://hooks.example.com/zq?token=abc",
    "HTTPS://Example.COM",
    "http://[::1]:9000/x",
])
def test_http_and_https_urls_are_accepted(url: str) -> None:
    assert validate_webhook_url(url) == url


@pytest.mark.parametrize("url", [
    "", "example.com/hook", "ftp://example.com/hook", "file:///etc/passwd",
    "javascript:alert(1)", "http://", "https:///path-only", "http://user:pw@example.com/",
    "http://example.com:notaport/", "http://exa mple.com/", "http://example.com/\nx",
    "http://example.com/" + "a" * 2048,
])
def test_other_urls_are_refused_naming_the_field(url: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        validate_webhook_url(url)
    assert caught.value.field == "webhook"
    assert "http(s) URL" in caught.value.limit


def test_redaction_keeps_scheme_host_and_port_only() -> None:
    assert redact_url("https://hooks.example.com/services/T0/B0/SECRET?token=t0k") == \
        "https://hooks.example.com"
    assert redact_url("http://127.0.0.1:8080/x?y=z") == "http://127.0.0.1:8080"
    assert redact_url("http://[::1]:9000/x") == "http://[::1]:9000"


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    outbox = cast(WebhookOutbox, object())  # backoff never touches the outbox
    dispatcher = Dispatcher(outbox, lambda d: {}, SECRET, backoff_base_s=2.0,
                            backoff_max_s=600.0, rng=random.Random(7))
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (9, 512.0), (10, 600.0),
                             (200, 600.0)]:
        delays = [dispatcher.backoff_s(attempt) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1  # jittered, so retries of many deliveries spread out


def test_secret_is_required() -> None:
    with pytest.raises(ConfigError, match="ZQ_WEBHOOK_SECRET"):
        secret_from_env({})
    with pytest.raises(ConfigError, match="ZQ_WEBHOOK_SECRET"):
        secret_from_env({"ZQ_WEBHOOK_SECRET": ""})
    assert secret_from_env({"ZQ_WEBHOOK_SECRET": "s3"}) == b"s3"


# -- Standard Webhooks -----------------------------------------------------------------
DELIVERY = "3f1c0d6e9a8b4c2d8e7f6a5b4c3d2e1f"
RAW_KEY = bytes(range(32))
WHSEC = b"whsec_" + base64.b64encode(RAW_KEY)


def _stock_webhook(secret: str | bytes) -> Any:
    """``standardwebhooks.Webhook(secret)`` from PyPI (skipped locally if not installed)."""
    require(importlib.util.find_spec("standardwebhooks") is not None,
            "standardwebhooks (the dev extra)")
    from standardwebhooks import Webhook

    return Webhook(secret)


def _standard_headers(key: bytes, timestamp: int) -> dict[str, str]:
    return {"webhook-id": DELIVERY, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign_standard(key, DELIVERY, timestamp, BODY)}


def test_standard_signature_is_base64_hmac_of_id_timestamp_body() -> None:
    expected = hmac.new(RAW_KEY, f"{DELIVERY}.{NOW}.".encode() + BODY, hashlib.sha256).digest()
    assert sign_standard(RAW_KEY, DELIVERY, NOW, BODY) == \
        "v1," + base64.b64encode(expected).decode()


def test_a_whsec_secret_keys_with_the_bytes_it_encodes() -> None:
    assert standard_key(WHSEC) == RAW_KEY
    assert standard_key(WHSEC.rstrip(b"=")) == RAW_KEY  # unpadded, as some issuers write it
    assert standard_secret(WHSEC) == WHSEC.decode()


def test_any_other_secret_keys_with_its_own_bytes() -> None:
    assert standard_key(SECRET) == SECRET
    assert standard_key("pässword".encode()) == "pässword".encode()
    # What receivers configure: whsec_ + base64 of those bytes, read back to the same key.
    for secret in (SECRET, "pässword".encode()):
        assert standard_key(standard_secret(secret).encode()) == secret


@pytest.mark.parametrize("value", ["whsec_", "whsec_not base64!", "whsec_A", "whsec_===="])
def test_a_malformed_whsec_secret_is_refused_at_start(value: str) -> None:
    with pytest.raises(ConfigError, match="whsec_"):
        standard_key(value.encode())
    with pytest.raises(ConfigError, match="ZQ_WEBHOOK_SECRET"):
        secret_from_env({"ZQ_WEBHOOK_SECRET": value})
    with pytest.raises(ConfigError):
        Dispatcher(cast(WebhookOutbox, object()), lambda d: {}, value.encode())


def test_the_zq_signature_keeps_the_secret_as_written() -> None:
    # A whsec_ secret changes only the Standard Webhooks key: X-Zq-Signature receivers
    # configured with the string itself keep verifying.
    header = sign(WHSEC, BODY, NOW)
    assert header.endswith(hmac.new(WHSEC, f"{NOW}.".encode() + BODY,
                                    hashlib.sha256).hexdigest())
    assert verify(WHSEC, BODY, header, now=NOW)


def test_standard_round_trip_and_rejections() -> None:
    headers = _standard_headers(RAW_KEY, NOW)
    assert verify_standard(RAW_KEY, BODY, headers, now=NOW + 299)
    assert verify_standard(RAW_KEY, BODY, {k.upper(): v for k, v in headers.items()}, now=NOW)
    assert not verify_standard(RAW_KEY, BODY + b" ", headers, now=NOW)
    assert not verify_standard(b"another key", BODY, headers, now=NOW)
    assert not verify_standard(RAW_KEY, BODY, headers, now=NOW + 301)
    assert not verify_standard(RAW_KEY, BODY, {**headers, "webhook-id": "other"}, now=NOW)
    assert not verify_standard(RAW_KEY, BODY, {**headers, "webhook-timestamp": str(NOW + 1)},
                               now=NOW)
    for missing in headers:
        assert not verify_standard(RAW_KEY, BODY,
                                   {k: v for k, v in headers.items() if k != missing}, now=NOW)
    # Rotation: several space-separated signatures, any one matching is enough.
    old = sign_standard(b"old key", DELIVERY, NOW, BODY)
    rotated = {**headers, "webhook-signature": f"{old} {headers['webhook-signature']}"}
    assert verify_standard(RAW_KEY, BODY, rotated, now=NOW)
    assert not verify_standard(RAW_KEY, BODY, {**headers, "webhook-signature": old}, now=NOW)


@pytest.mark.parametrize("secret", [WHSEC, SECRET, "pässword".encode()])
def test_the_stock_library_verifies_with_the_secret_receivers_configure(secret: bytes) -> None:
    now = int(time.time())
    headers = _standard_headers(standard_key(secret), now)
    assert _stock_webhook(standard_secret(secret)).verify(BODY, headers) == {
        "event": "batch.finished", "id": "b1"}
    # A plain secret's raw bytes work too, where a library takes bytes.
    assert _stock_webhook(standard_key(secret)).verify(BODY, headers, json_parse=False) is None
    other = standard_secret(b"some other secret")
    from standardwebhooks.webhooks import WebhookVerificationError

    with pytest.raises(WebhookVerificationError):
        _stock_webhook(other).verify(BODY, headers)


# -- one process, a dispatch loop per shard ------------------------------------------------
class _Loop(Dispatcher):
    """A dispatcher whose loop and passes are scripted (no Redis)."""

    def __init__(self, where: str, fail: BaseException | None = None, sent: int = 0) -> None:
        super().__init__(cast(WebhookOutbox, object()), lambda d: {}, SECRET, where=where)
        self.fail = fail
        self.sent = sent
        self.passes = 0
        self.stopped = threading.Event()

    def run_forever(self, poll_s: float = 5.0, stop: threading.Event | None = None) -> None:
        assert stop is not None
        if self.fail is not None:
            raise self.fail
        stop.wait(30)
        self.stopped.set()

    def run_once(self) -> int:
        self.passes += 1
        if self.fail is not None:
            raise self.fail
        return self.sent


def test_every_shards_loop_runs_until_the_stop_signal() -> None:
    loops = [_Loop("shard 0"), _Loop("shard 1"), _Loop("shard 2")]
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    run_shards(loops, stop=stop)
    assert time.monotonic() - started < 5
    assert all(loop.stopped.is_set() for loop in loops)


def test_a_loop_ending_in_a_bug_stops_the_others_and_is_raised() -> None:
    healthy = _Loop("shard 0")
    with pytest.raises(RuntimeError, match="a bug"):
        run_shards([healthy, _Loop("shard 1", fail=RuntimeError("a bug"))])
    assert healthy.stopped.wait(5)


def test_once_passes_over_a_shard_whose_redis_fails_and_then_raises() -> None:
    loops = [_Loop("shard 0", sent=2), _Loop("shard 1", fail=redis.ConnectionError("down")),
             _Loop("shard 2", sent=3)]
    with pytest.raises(redis.ConnectionError, match="down"):
        run_shards_once(loops)
    assert [loop.passes for loop in loops] == [1, 1, 1]
    assert run_shards_once([loops[0], loops[2]]) == 5
