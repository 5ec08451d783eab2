"""Webhooks cannot be aimed at the cluster's insides (SSRF), at submit or at delivery.

Real Redis, the real dispatcher (in-process and as ``zq webhooks``) and real receivers
on 127.0.0.1 that record every request: a refused delivery must leave its receiver
with nothing, while the same receiver, once allowed, does get the POST (so "nothing
arrived" means "nothing was sent", not "it could not have arrived").
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from common.settings import Settings
from common.status import JobStatus
from common.webhook_policy import WebhookPolicy, WebhookRefused
from common.webhooks import WebhookOutbox
from producer.client import Client
from producer.webhooks import Dispatcher
from tests.integration.test_webhooks import (
    SECRET,
    TOKEN,
    Receiver,
    assert_signed,
    drive,
    manifest_body,
    settled,
)
from zq.embedded_redis import RedisServer

pytestmark = pytest.mark.integration

PUBLIC = "93.184.216.34"
NAME = "hooks.rebind.test"  # in no DNS: only the resolvers below know it


class Rebinding:
    """A resolver answering a public address first and loopback ever after."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, host: str, port: int) -> Sequence[str]:
        assert host == NAME
        self.calls += 1
        return [PUBLIC] if self.calls == 1 else ["127.0.0.1"]


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix, so tests sharing the session's Redis do not meet."""
    return f"ssrf{uuid.uuid4().hex[:8]}"


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the session's Redis."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def outbox(redis_client: redis.Redis, prefix: str) -> WebhookOutbox:
    """An outbox under the test's prefix."""
    return WebhookOutbox(redis_client, prefix)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """One recording receiver on 127.0.0.1."""
    started = Receiver()
    yield started
    started.stop()


def dispatcher(outbox: WebhookOutbox, policy: WebhookPolicy, **options: Any) -> Dispatcher:
    """A dispatcher with test-sized timeouts and backoff."""
    return Dispatcher(outbox, manifest_body, SECRET, timeout_s=2.0, backoff_base_s=0.05,
                      backoff_max_s=0.2, policy=policy, **options)


def _port(receiver: Receiver) -> int:
    return int(receiver.server.server_address[1])


def test_dns_rebinding_is_refused_at_delivery_and_nothing_is_sent(
        outbox: WebhookOutbox, receiver: Receiver,
        audit_lines: list[dict[str, Any]]) -> None:
    url = f"http://{NAME}:{_port(receiver)}/hook?token={TOKEN}"
    rebinding = Rebinding()
    policy = WebhookPolicy((), rebinding)
    assert policy.vet(url).addresses == (PUBLIC,)  # at submit: public, accepted
    assert outbox.enqueue("job", "j-rebind", url)

    worker = dispatcher(outbox, policy, max_attempts=5)
    assert worker.run_once() == 1
    assert rebinding.calls == 2  # looked up again at delivery: now it is loopback
    assert receiver.received() == []
    state = outbox.state("job", "j-rebind")
    assert state is not None
    assert (state.status, state.attempts, state.status_code) == ("failed", 1, None)
    assert state.last_error is not None
    assert state.last_error.startswith(f"refused: {NAME} resolves to 127.0.0.1")
    assert "loopback" in state.last_error and TOKEN not in state.last_error
    # A refusal is final: not retried, whatever max_attempts allows.
    assert worker.run_once() == 0
    assert outbox.due() == []
    (failed,) = [line for line in audit_lines if line["event"] == "webhook_failed"]
    assert failed["subject_id"] == "j-rebind" and "loopback" in failed["error"]
    assert receiver.received() == []


def test_the_same_name_allowed_is_delivered_to_the_vetted_address(
        outbox: WebhookOutbox, receiver: Receiver) -> None:
    # The control for the test above: this receiver is reachable through the name,
    # and only through the address the policy resolved (the name is in no DNS).
    url = f"http://{NAME}:{_port(receiver)}/hook?token={TOKEN}"
    policy = WebhookPolicy(("127.0.0.1",), lambda host, port: ["127.0.0.1"])
    assert outbox.enqueue("job", "j-allowed", url)
    worker = dispatcher(outbox, policy)
    drive(worker, until=settled(outbox, "job", "j-allowed"))
    (request,) = receiver.received()
    assert_signed(request)
    assert request.headers["host"] == f"{NAME}:{_port(receiver)}"
    assert request.path == f"/hook?token={TOKEN}"
    state = outbox.state("job", "j-allowed")
    assert state is not None and (state.status, state.status_code) == ("delivered", 200)


@pytest.mark.parametrize("spelling", ["127.0.0.1", "2130706433", "0x7f.1", "[::ffff:7f00:1]",
                                      "localhost"])
def test_a_loopback_url_owed_without_a_submit_check_is_refused_by_the_dispatcher(
        outbox: WebhookOutbox, receiver: Receiver, spelling: str) -> None:
    # E.g. queued by an older version, or written to Redis directly.
    url = f"http://{spelling}:{_port(receiver)}/hook"
    assert outbox.enqueue("batch", "b-loop", url)
    worker = dispatcher(outbox, WebhookPolicy())
    assert worker.run_once() == 1
    state = outbox.state("batch", "b-loop")
    assert state is not None and (state.status, state.attempts) == ("failed", 1)
    assert state.last_error is not None and state.last_error.startswith("refused:")
    assert "loopback" in state.last_error
    assert receiver.received() == []


def test_a_name_that_stops_resolving_is_retried_then_given_up(outbox: WebhookOutbox) -> None:
    def broken(host: str, port: int) -> Sequence[str]:
        raise OSError(-3, "Temporary failure in name resolution")

    assert outbox.enqueue("job", "j-dns", f"http://{NAME}/hook")
    worker = dispatcher(outbox, WebhookPolicy((), broken), max_attempts=3)
    drive(worker, until=settled(outbox, "job", "j-dns"))
    state = outbox.state("job", "j-dns")
    assert state is not None and (state.status, state.attempts) == ("failed", 3)
    assert state.last_error == (f"connection: host {NAME} does not resolve "
                                "(Temporary failure in name resolution)")


def _zq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zq", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def test_zq_refuses_a_loopback_webhook_unless_allowed_and_the_dispatcher_agrees(
        redis_server: RedisServer, redis_client: redis.Redis, prefix: str,
        receiver: Receiver, tmp_path: Path) -> None:
    env = {**os.environ, "ZQ_REDIS_URL": redis_server.url, "ZQ_KEY_PREFIX": prefix,
           "ZQ_STORAGE_URL": f"file://{tmp_path}", "ZQ_WEBHOOK_SECRET": SECRET.decode()}
    env.pop("ZQ_WEBHOOK_ALLOW", None)
    allowed = {**env, "ZQ_WEBHOOK_ALLOW": "127.0.0.1"}
    generate = ["generate", "a kite", "--width", "32", "--height", "32",
                "--webhook", receiver.url]

    refused = _zq(env, *generate, "--job-id", "j-refused")
    assert refused.returncode == 2, refused.stderr
    assert "webhook" in refused.stderr and "loopback" in refused.stderr
    assert "ZQ_WEBHOOK_ALLOW" in refused.stderr
    assert TOKEN not in refused.stderr  # the URL is shown as scheme://host:port only
    assert redis_client.keys(f"{prefix}:*") == []  # nothing was recorded or queued

    # Allowed at submit, then the job ends (cancelled) and owes its webhook.
    for job_id in ("j-one", "j-two"):
        submitted = _zq(allowed, *generate, "--job-id", job_id)
        assert submitted.returncode == 0, submitted.stderr
    client = Client(Settings.from_env(allowed))
    outbox = WebhookOutbox(redis_client, prefix)
    assert client.cancel("j-one") is JobStatus.CANCELLED

    # A dispatcher without the allow-list refuses it and sends nothing...
    sent = _zq(env, "webhooks", "--once")
    assert sent.returncode == 0, sent.stderr
    state = outbox.state("job", "j-one")
    assert state is not None and state.status == "failed"
    assert state.last_error is not None and "loopback" in state.last_error
    assert receiver.received() == []

    # ... one with it delivers.
    assert client.cancel("j-two") is JobStatus.CANCELLED
    sent = _zq(allowed, "webhooks", "--once")
    assert sent.returncode == 0, sent.stderr
    assert "1 attempted" in sent.stdout
    (request,) = receiver.received()
    assert_signed(request)
    assert (request.json["event"], request.json["id"]) == ("job.finished", "j-two")
    assert request.json["data"]["status"] == "cancelled"
    state = outbox.state("job", "j-two")
    assert state is not None and (state.status, state.status_code) == ("delivered", 200)


def test_a_refused_webhook_refuses_the_whole_batch_before_anything_is_queued(
        redis_server: RedisServer, redis_client: redis.Redis, prefix: str,
        tmp_path: Path) -> None:
    from producer.batch import Batches

    manifest = tmp_path / "catalogue.csv"
    manifest.write_text("sku,prompt\nSKU-1,a lamp\n")
    settings = Settings.from_env({"ZQ_REDIS_URL": redis_server.url, "ZQ_KEY_PREFIX": prefix,
                                  "ZQ_STORAGE_URL": f"file://{tmp_path}"})
    with pytest.raises(WebhookRefused) as caught:
        Batches(Client(settings)).submit(manifest, {}, "http://169.254.169.254/latest")
    assert caught.value.rule == "cloud metadata"
    assert redis_client.keys(f"{prefix}:*") == []
