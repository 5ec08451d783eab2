"""Completion webhooks against a real Redis and a real HTTP receiver started by the test.

The receiver records every request it gets and answers from a script (200, or 500 a
few times first, or a stall past the dispatcher's timeout), so each test checks what
actually went over the wire: how many POSTs, their bodies and their signatures.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

from common.errors import InvalidJob
from common.job import JobKind, new_job
from common.jobstore import JobStore
from common.status import JobStatus
from common.webhook_policy import WebhookPolicy
from common.webhooks import Delivery, WebhookOutbox
from producer.webhooks import (
    Dispatcher,
    standard_key,
    standard_secret,
    verify,
    verify_standard,
)
from tests.conftest import require
from zq.embedded_redis import RedisServer

pytestmark = pytest.mark.integration

SECRET = b"integration-test-secret"
TOKEN = "tok-5ecret-in-query"


@dataclass(frozen=True)
class Received:
    """One request as the receiver saw it, and what it answered."""

    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    answered: int
    at: float  # monotonic

    @property
    def json(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.body)
        return loaded


class Receiver:
    """An HTTP server on 127.0.0.1 (free port) recording every POST.

    ``answer(n)`` gives the status for the n-th request (1-based); ``stall(n)`` makes
    the n-th request hang (until the receiver stops) before answering.
    """

    def __init__(self, answer: Callable[[int], int] = lambda n: 200,
                 stall: Callable[[int], bool] = lambda n: False) -> None:
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    number = len(receiver.requests) + 1
                    status = answer(number)
                    receiver.requests.append(Received(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                        status, time.monotonic()))
                if stall(number):
                    receiver._release.wait(30)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    pass  # the dispatcher gave up on a stalled request

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        """A hook URL carrying a token in its query string, as real ones often do."""
        return f"{self.base}/hook/path-part?token={TOKEN}"

    def received(self) -> list[Received]:
        """The requests so far, in arrival order."""
        with self._lock:
            return list(self.requests)

    def stop(self) -> None:
        """Release stalled requests and shut down."""
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    """Start receivers on demand; all are stopped after the test."""
    started: list[Receiver] = []

    def start(**options: Any) -> Receiver:
        receiver = Receiver(**options)
        started.append(receiver)
        return receiver

    yield start
    for receiver in started:
        receiver.stop()


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix, so tests sharing the session's Redis do not meet."""
    return f"wh{uuid.uuid4().hex[:8]}"


@pytest.fixture
def connect(redis_server: RedisServer) -> Iterator[Callable[..., redis.Redis]]:
    """Open Redis clients on the test server; all are closed after the test."""
    opened: list[redis.Redis] = []

    def open_client(decode_responses: bool = True) -> redis.Redis:
        client = redis.Redis.from_url(redis_server.url, decode_responses=decode_responses)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()


@pytest.fixture
def outbox(connect: Callable[..., redis.Redis], prefix: str) -> WebhookOutbox:
    """An outbox under the test's prefix."""
    return WebhookOutbox(connect(), prefix)


def manifest_body(delivery: Delivery) -> dict[str, Any]:
    """A stand-in for a batch's results manifest."""
    return {"manifest": f"batches/{delivery.subject_id}/manifest.json", "images": 3}


def dispatcher(outbox: WebhookOutbox, **options: Any) -> Dispatcher:
    """A dispatcher with test-sized timeouts and backoff, allowed to reach 127.0.0.1."""
    settings: dict[str, Any] = {"timeout_s": 2.0, "backoff_base_s": 0.05,
                                "backoff_max_s": 0.2,
                                "policy": WebhookPolicy(("127.0.0.1",)), **options}
    return Dispatcher(outbox, settings.pop("body_for", manifest_body), SECRET, **settings)


def drive(*dispatchers: Dispatcher, until: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Run the dispatchers until ``until()`` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout_s
    while not until():
        assert time.monotonic() < deadline, "webhook deliveries did not settle in time"
        if sum(d.run_once() for d in dispatchers) == 0:
            time.sleep(0.01)  # nothing due yet: a retry is backing off


def settled(outbox: WebhookOutbox, kind: str, *ids: str) -> Callable[[], bool]:
    """Whether every subject's webhook has ended (delivered or given up)."""

    def check() -> bool:
        states = [outbox.state(kind, i) for i in ids]
        return all(s is not None and s.status != "pending" for s in states)

    return check


def assert_signed(request: Received, secret: bytes = SECRET) -> None:
    """Both signatures check out: X-Zq-Signature and the Standard Webhooks one."""
    header = request.headers["x-zq-signature"]
    assert verify(secret, request.body, header), header
    assert not verify(b"some other secret", request.body, header)
    assert verify_standard(standard_key(secret), request.body, request.headers)
    assert not verify_standard(b"some other secret", request.body, request.headers)
    assert request.headers["webhook-id"] == request.headers["x-zq-delivery"]
    assert request.headers["x-zq-signature"].startswith(
        f"t={request.headers['webhook-timestamp']},")


@pytest.mark.parametrize("decode_responses", [True, False])
def test_each_finished_batch_gets_exactly_one_signed_post(
        connect: Callable[..., redis.Redis], prefix: str,
        receivers: Callable[..., Receiver], audit_lines: list[dict[str, Any]],
        decode_responses: bool) -> None:
    outbox = WebhookOutbox(connect(decode_responses), prefix)
    receiver = receivers()
    batches = ["b-1", "b-2", "b-3"]
    for batch in batches:
        assert outbox.enqueue("batch", batch, receiver.url) is True
    # Finishing is noticed again (another worker, a redelivery): still owed once.
    for batch in batches:
        assert outbox.enqueue("batch", batch, receiver.url) is False
        assert outbox.enqueue("batch", batch, f"{receiver.base}/elsewhere") is False

    worker = dispatcher(outbox)
    drive(worker, until=settled(outbox, "batch", *batches))
    for _ in range(3):
        assert worker.run_once() == 0

    got = receiver.received()
    assert sorted(r.json["id"] for r in got) == batches
    for request in got:
        assert_signed(request)
        batch = request.json["id"]
        state = outbox.state("batch", batch)
        assert state is not None
        assert (state.status, state.attempts, state.status_code) == ("delivered", 1, 200)
        assert request.path == f"/hook/path-part?token={TOKEN}"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["x-zq-event"] == "batch.finished"
        assert request.headers["x-zq-delivery"] == state.delivery_id
        assert request.json == {
            "event": "batch.finished", "id": batch, "delivery_attempt": 1,
            "data": {"manifest": f"batches/{batch}/manifest.json", "images": 3}}
    assert len({r.headers["x-zq-delivery"] for r in got}) == len(batches)
    delivered = sorted(line["subject_id"] for line in audit_lines
                       if line["event"] == "webhook_delivered")
    assert delivered == batches
    assert outbox.due() == []


def test_failures_are_retried_with_backoff_until_acknowledged(
        outbox: WebhookOutbox, receivers: Callable[..., Receiver],
        caplog: pytest.LogCaptureFixture) -> None:
    receiver = receivers(answer=lambda n: 500 if n <= 2 else 200)
    assert outbox.enqueue("campaign_run", "run-7", receiver.url)
    worker = dispatcher(outbox, max_attempts=5)
    with caplog.at_level(logging.WARNING, logger="zq.webhooks"):
        drive(worker, until=settled(outbox, "campaign_run", "run-7"))
    assert worker.run_once() == 0

    got = receiver.received()
    assert [r.answered for r in got] == [500, 500, 200]
    assert [r.json["delivery_attempt"] for r in got] == [1, 2, 3]
    assert len({r.headers["x-zq-delivery"] for r in got}) == 1  # one delivery, three tries
    assert len({r.headers["webhook-id"] for r in got}) == 1
    assert {r.headers["x-zq-event"] for r in got} == {"campaign_run.finished"}
    for request in got:
        assert_signed(request)
    # Backoff: each retry waited at least half its base delay (the jitter's floor).
    assert got[1].at - got[0].at >= 0.025
    assert got[2].at - got[1].at >= 0.05
    state = outbox.state("campaign_run", "run-7")
    assert state is not None
    assert (state.status, state.attempts, state.status_code) == ("delivered", 3, 200)
    assert state.last_error == "HTTP 500"
    # The failures were logged, naming the receiver without its path or token.
    assert "attempt 1 failed (HTTP 500)" in caplog.text
    assert receiver.base in caplog.text
    assert TOKEN not in caplog.text and "path-part" not in caplog.text


def test_a_receiver_that_always_fails_is_given_up_after_max_attempts(
        outbox: WebhookOutbox, receivers: Callable[..., Receiver],
        audit_lines: list[dict[str, Any]]) -> None:
    receiver = receivers(answer=lambda n: 500)
    assert outbox.enqueue("job", "j-1", receiver.url)
    worker = dispatcher(outbox, max_attempts=4, body_for=lambda d: {})
    drive(worker, until=settled(outbox, "job", "j-1"))
    assert worker.run_once() == 0

    assert [r.answered for r in receiver.received()] == [500] * 4
    state = outbox.state("job", "j-1")
    assert state is not None
    assert (state.status, state.attempts, state.status_code) == ("failed", 4, 500)
    assert state.last_error == "HTTP 500"
    assert state.finished_at is not None and state.next_attempt_at is None
    assert outbox.due() == []
    failed = [line for line in audit_lines if line["event"] == "webhook_failed"]
    assert len(failed) == 1
    assert failed[0]["subject_kind"] == "job" and failed[0]["subject_id"] == "j-1"
    assert failed[0]["attempts"] == 4 and failed[0]["error"] == "HTTP 500"
    assert failed[0]["target"] == receiver.base
    assert TOKEN not in json.dumps(audit_lines)
    assert SECRET.decode() not in json.dumps(audit_lines)


def test_connection_errors_and_timeouts_count_as_failures(
        outbox: WebhookOutbox, receivers: Callable[..., Receiver]) -> None:
    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    assert outbox.enqueue("job", "refused", f"http://127.0.0.1:{closed_port}/hook")
    slow = receivers(stall=lambda n: n == 1)
    assert outbox.enqueue("job", "slow", slow.url)

    worker = dispatcher(outbox, max_attempts=2, timeout_s=0.5)
    drive(worker, until=settled(outbox, "job", "refused", "slow"))

    refused = outbox.state("job", "refused")
    assert refused is not None and (refused.status, refused.attempts) == ("failed", 2)
    assert refused.last_error is not None and refused.last_error.startswith("connection:")
    assert refused.status_code is None
    timed_out = outbox.state("job", "slow")
    assert timed_out is not None
    assert (timed_out.status, timed_out.attempts, timed_out.status_code) == (
        "delivered", 2, 200)
    assert timed_out.last_error is not None and "timed out" in timed_out.last_error
    assert len(slow.received()) == 2


def test_a_failing_body_builder_is_retried_and_recorded(
        outbox: WebhookOutbox, receivers: Callable[..., Receiver]) -> None:
    receiver = receivers()

    def broken(delivery: Delivery) -> dict[str, Any]:
        raise LookupError(f"no manifest for {delivery.subject_id}")

    assert outbox.enqueue("batch", "b-x", receiver.url)
    worker = dispatcher(outbox, max_attempts=2, body_for=broken)
    drive(worker, until=settled(outbox, "batch", "b-x"))
    state = outbox.state("batch", "b-x")
    assert state is not None and (state.status, state.attempts) == ("failed", 2)
    assert state.last_error == "body: LookupError: no manifest for b-x"
    assert receiver.received() == []


def test_two_dispatchers_on_one_outbox_never_send_twice(
        connect: Callable[..., redis.Redis], prefix: str,
        receivers: Callable[..., Receiver]) -> None:
    receiver = receivers()
    subjects = [f"b-{i:02d}" for i in range(20)]
    outbox = WebhookOutbox(connect(), prefix)
    for subject in subjects:
        assert outbox.enqueue("batch", subject, receiver.url)
    workers = [dispatcher(WebhookOutbox(connect(), prefix)) for _ in range(2)]
    attempted = [0, 0]
    errors: list[BaseException] = []
    start = threading.Barrier(2)
    done = settled(outbox, "batch", *subjects)

    def run(index: int) -> None:
        try:
            start.wait(5)
            deadline = time.monotonic() + 20
            while not done() and time.monotonic() < deadline:
                attempted[index] += workers[index].run_once()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert done()
    counts = Counter(r.json["id"] for r in receiver.received())
    assert counts == dict.fromkeys(subjects, 1)
    assert sum(attempted) == len(subjects)


def test_a_dead_dispatchers_delivery_is_retaken_after_its_lease(outbox: WebhookOutbox) -> None:
    assert outbox.enqueue("batch", "b-lease", "http://127.0.0.1:9/hook")
    t0 = time.time()
    first = outbox.claim_next(lease_s=30, now=t0)
    assert first is not None and first.attempts == 1
    assert outbox.claim_next(lease_s=30, now=t0 + 29) is None  # still leased
    second = outbox.claim_next(lease_s=30, now=t0 + 31)  # the first dispatcher died
    assert second is not None and second.attempts == 2
    assert second.delivery_id == first.delivery_id
    # The dead attempt's late outcome cannot overwrite the live one.
    assert outbox.delivered(first, 200) is False
    assert outbox.retry_later(first, "late", 0) is False
    assert outbox.delivered(second, 204) is True
    state = outbox.state("batch", "b-lease")
    assert state is not None
    assert (state.status, state.attempts, state.status_code) == ("delivered", 2, 204)
    assert outbox.claim_next(now=t0 + 1000) is None
    assert outbox.give_up(second, "too late") is False


def test_bad_urls_and_kinds_are_refused_before_anything_is_owed(outbox: WebhookOutbox) -> None:
    with pytest.raises(InvalidJob, match="webhook"):
        outbox.enqueue("batch", "b-bad", "ftp://example.com/hook")
    with pytest.raises(ValueError, match="kind"):
        outbox.enqueue("album", "b-bad", "http://example.com/hook")
    assert outbox.state("batch", "b-bad") is None
    assert outbox.due() == []


def test_zq_webhooks_sends_a_finished_jobs_record_and_url(
        redis_server: RedisServer, connect: Callable[..., redis.Redis], prefix: str,
        receivers: Callable[..., Receiver], tmp_path: Path) -> None:
    env = {**os.environ, "ZQ_REDIS_URL": redis_server.url, "ZQ_KEY_PREFIX": prefix,
           "ZQ_STORAGE_URL": f"file://{tmp_path}", "ZQ_WEBHOOK_ALLOW": "127.0.0.1"}
    env.pop("ZQ_WEBHOOK_SECRET", None)
    command = [sys.executable, "-m", "zq", "webhooks", "--once"]
    missing = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert "ZQ_WEBHOOK_SECRET" in missing.stderr

    client = connect()
    jobs = JobStore(client, prefix)
    spec = new_job(JobKind.GENERATE, prompt="a lantern", width=32, height=32, job_id="j-cli")
    jobs.submit(spec)
    assert jobs.claim(spec, "w-test", 30, 3).outcome == "claimed"
    jobs.finish(spec, JobStatus.SUCCEEDED, image="results/j-cli.png",
                manifest="results/j-cli.json")
    receiver = receivers()
    assert WebhookOutbox(client, prefix).enqueue("job", "j-cli", receiver.url)

    env["ZQ_WEBHOOK_SECRET"] = SECRET.decode()
    sent = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    assert "1 attempted" in sent.stdout
    assert TOKEN not in sent.stdout + sent.stderr

    (request,) = receiver.received()
    assert_signed(request)
    message = request.json
    assert (message["event"], message["id"]) == ("job.finished", "j-cli")
    data = message["data"]
    assert (data["job_id"], data["status"], data["image"]) == (
        "j-cli", "succeeded", "results/j-cli.png")
    assert data["url"] == (tmp_path / "results" / "j-cli.png").as_uri()


# -- Standard Webhooks, checked by the stock libraries -----------------------------------
WHSEC_SECRET = b"whsec_" + base64.b64encode(b"\x00\x01 integration key \xfe\xff")
# The stock npm receiver library (scripts/test runs npm ci --prefix tests/integration/node).
NODE_MODULES = Path(__file__).resolve().parent / "node" / "node_modules"
NODE_VERIFY = """
const { Webhook } = require("standardwebhooks");
let input = "";
process.stdin.on("data", (chunk) => { input += chunk; });
process.stdin.on("end", () => {
  const { secret, body, headers } = JSON.parse(input);
  const payload = new Webhook(secret).verify(body, headers);
  let refused = false;
  try { new Webhook("whsec_" + Buffer.from("wrong").toString("base64")).verify(body, headers); }
  catch (e) { refused = true; }
  process.stdout.write(JSON.stringify({ id: payload.id, refused }));
});
"""


def _delivered_with(outbox: WebhookOutbox, receiver: Receiver, secret: bytes,
                    subject: str) -> Received:
    """One real delivery by a real dispatcher signed under ``secret``, as received."""
    assert outbox.enqueue("batch", subject, receiver.url)
    worker = Dispatcher(outbox, manifest_body, secret, timeout_s=2.0,
                        policy=WebhookPolicy(("127.0.0.1",)))
    drive(worker, until=settled(outbox, "batch", subject))
    (request,) = [r for r in receiver.received() if r.json["id"] == subject]
    return request


@pytest.mark.parametrize("secret", [SECRET, WHSEC_SECRET], ids=["plain", "whsec"])
def test_a_stock_standard_webhooks_receiver_verifies_a_real_delivery(
        outbox: WebhookOutbox, receivers: Callable[..., Receiver], secret: bytes) -> None:
    require(importlib.util.find_spec("standardwebhooks") is not None,
            "standardwebhooks (the dev extra)")
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    request = _delivered_with(outbox, receivers(), secret, "b-std")
    assert_signed(request, secret)
    # The string receivers are told to configure: the secret itself when it is whsec_.
    configured = standard_secret(secret)
    assert (configured == secret.decode()) == secret.startswith(b"whsec_")
    assert Webhook(configured).verify(request.body, request.headers) == request.json
    with pytest.raises(WebhookVerificationError):
        Webhook(standard_secret(b"some other secret")).verify(request.body, request.headers)
    tampered = request.body.replace(b"b-std", b"b-evil")
    with pytest.raises(WebhookVerificationError):
        Webhook(configured).verify(tampered, request.headers)


def test_the_npm_standard_webhooks_library_verifies_a_real_delivery(
        outbox: WebhookOutbox, receivers: Callable[..., Receiver]) -> None:
    node = shutil.which("node")
    env = {**os.environ, "NODE_PATH": str(NODE_MODULES)}
    probe = [node or "node", "-e", "require('standardwebhooks')"]
    require(node is not None and subprocess.run(probe, capture_output=True, env=env,
                                                timeout=30).returncode == 0,
            "node with the npm package standardwebhooks (npm ci --prefix tests/integration/node)")
    assert node is not None
    request = _delivered_with(outbox, receivers(), WHSEC_SECRET, "b-node")
    message = {"secret": standard_secret(WHSEC_SECRET), "body": request.body.decode(),
               "headers": request.headers}
    checked = subprocess.run([node, "-e", NODE_VERIFY], input=json.dumps(message), env=env,
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout) == {"id": "b-node", "refused": True}
