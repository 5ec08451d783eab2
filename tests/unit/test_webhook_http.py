"""Webhook POSTs go to the vetted address, with the URL's name in Host and TLS.

Real HTTP(S) servers on 127.0.0.1 record what reaches them. The URLs name hosts that
exist in no DNS (``*.example.test``): a request can only arrive if the connection was
made to the address the policy checked, not to a fresh lookup of the name.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from common.webhook_policy import WebhookPolicy, WebhookTarget
from producer.webhook_http import ConnectFailed, post
from tests.conftest import require

NAME = "hooks.example.test"


class Server:
    """An HTTP server on 127.0.0.1 recording (path, headers, body) of every POST."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.server_names: list[str | None] = []
        recorded = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                recorded.append((self.path, {k.lower(): v for k, v in self.headers.items()},
                                 body))
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            tls.sni_callback = self._sni
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def _sni(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    @property
    def port(self) -> int:
        """The port it listens on."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Shut down and close the listening socket."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Start servers on demand; all are stopped after the test."""
    started: list[Server] = []

    def start(**options: Any) -> Server:
        started.append(Server(**options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def pinned(url: str, *addresses: str) -> WebhookTarget:
    """``url`` vetted with its name allowed and resolving to ``addresses``."""
    host = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]
    return WebhookPolicy((host,), lambda name, port: list(addresses)).vet(url)


def test_the_post_reaches_the_vetted_address_with_the_name_in_host(
        servers: Callable[..., Server]) -> None:
    server = servers()
    target = pinned(f"http://{NAME}:{server.port}/hook?token=t", "127.0.0.1")
    status = post(target, b'{"a":1}', {"Content-Type": "application/json"}, 5.0)
    assert status == 200
    ((path, headers, body),) = server.requests
    assert (path, body) == ("/hook?token=t", b'{"a":1}')
    assert headers["host"] == f"{NAME}:{server.port}"
    assert headers["content-type"] == "application/json"


def test_a_redirect_is_an_answer_not_followed(servers: Callable[..., Server]) -> None:
    elsewhere = servers()
    redirecting = servers(status=307,
                          headers={"Location": f"http://127.0.0.1:{elsewhere.port}/x"})
    target = pinned(f"http://{NAME}:{redirecting.port}/", "127.0.0.1")
    assert post(target, b"{}", {}, 5.0) == 307
    assert len(redirecting.requests) == 1
    assert elsewhere.requests == []


def test_the_next_vetted_address_is_tried_when_one_refuses(
        servers: Callable[..., Server]) -> None:
    server = servers()
    # 127.0.0.2 is loopback too, but nothing listens there on this port.
    target = pinned(f"http://{NAME}:{server.port}/", "127.0.0.2", "127.0.0.1")
    assert post(target, b"{}", {}, 5.0) == 200
    assert len(server.requests) == 1


def test_no_vetted_address_answering_is_a_connect_failure() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectFailed, match="refused"):
        post(pinned(f"http://{NAME}:{port}/", "127.0.0.1"), b"{}", {}, 5.0)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Self-signed certificate + key files (one PEM each) for a host name."""
    require(shutil.which("openssl") is not None, "openssl")
    folder = tmp_path_factory.mktemp("certs")

    def make(name: str) -> Path:
        cert, key = folder / f"{name}.crt", folder / f"{name}.key"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-days", "1", "-subj", f"/CN={name}",
                        "-addext", f"subjectAltName=DNS:{name}",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True, timeout=60)
        both = folder / f"{name}.pem"
        both.write_bytes(cert.read_bytes() + key.read_bytes())
        return both

    return make


def _server_context(pem: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


def _trusting(pem: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pem))
    return context


def test_https_sends_the_name_as_sni_and_checks_the_certificate_for_it(
        servers: Callable[..., Server], certificates: Callable[[str], Path]) -> None:
    pem = certificates(NAME)
    server = servers(tls=_server_context(pem))
    target = pinned(f"https://{NAME}:{server.port}/secure", "127.0.0.1")
    assert post(target, b"{}", {}, 5.0, tls=_trusting(pem)) == 200
    assert server.server_names == [NAME]
    ((path, headers, _),) = server.requests
    assert (path, headers["host"]) == ("/secure", f"{NAME}:{server.port}")


def test_https_to_a_server_holding_another_names_certificate_fails(
        servers: Callable[..., Server], certificates: Callable[[str], Path]) -> None:
    other = certificates("other.example.test")
    server = servers(tls=_server_context(other))
    target = pinned(f"https://{NAME}:{server.port}/", "127.0.0.1")
    with pytest.raises(ConnectFailed, match="certificate verify failed"):
        post(target, b"{}", {}, 5.0, tls=_trusting(other))
    assert server.requests == []


def test_https_without_a_trusted_certificate_fails(
        servers: Callable[..., Server], certificates: Callable[[str], Path]) -> None:
    server = servers(tls=_server_context(certificates(NAME)))
    target = pinned(f"https://{NAME}:{server.port}/", "127.0.0.1")
    with pytest.raises(ConnectFailed, match="certificate verify failed"):
        post(target, b"{}", {}, 5.0)  # the system's CAs do not know a self-signed one
    assert server.requests == []
