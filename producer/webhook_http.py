"""One webhook POST, sent to the address the policy vetted and nowhere else.

:meth:`common.webhook_policy.WebhookPolicy.vet` resolves a URL's host and checks every
address; :func:`post` then connects to one of exactly those addresses, never resolving
the name again, so a name that changes its answer between the check and the call (DNS
rebinding) cannot steer the request elsewhere. The Host header and, for https, the TLS
server name and the certificate check still use the URL's host name. Redirects are
never followed (http.client does not), and no proxy is used: a proxy would resolve the
name itself.
"""

from __future__ import annotations

import http.client
import socket
import ssl

from common.webhook_policy import WebhookTarget

MAX_ANSWER_BYTES = 64 * 1024


class ConnectFailed(OSError):
    """No connection could be made to any vetted address (refused, unreachable, TLS)."""


class PinnedConnection(http.client.HTTPConnection):
    """An HTTP connection, TLS when ``tls`` is given, made to one vetted ``address``.

    ``host`` (the URL's name) is what the Host header and TLS server name carry.
    """

    def __init__(self, host: str, port: int, address: str, timeout: float,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address
        self.tls = tls
        if tls is not None:
            self.default_port = http.client.HTTPS_PORT  # so Host omits ":443"

    def connect(self) -> None:
        """Open the socket to the vetted address (never to ``self.host`` resolved anew)."""
        sock = socket.create_connection((self.address, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def post(target: WebhookTarget, body: bytes, headers: dict[str, str], timeout_s: float,
         tls: ssl.SSLContext | None = None) -> int:
    """POST ``body`` to ``target``; the answer's status code (its body is read and dropped).

    Tries the vetted addresses in order until one connects: ``ConnectFailed`` if none
    does. ``TimeoutError`` if an answer takes longer than ``timeout_s`` (per socket
    operation); other ``OSError`` or ``http.client.HTTPException`` for a broken exchange.
    ``tls`` is the context for https (a default, verifying one when None).
    """
    if target.scheme == "https" and tls is None:
        tls = ssl.create_default_context()
    connection: PinnedConnection | None = None
    failure: OSError | None = None
    for address in target.addresses:
        candidate = PinnedConnection(target.host, target.port, address, timeout_s,
                                     tls if target.scheme == "https" else None)
        try:
            candidate.connect()
        except OSError as exc:
            candidate.close()
            failure = exc
            continue
        connection = candidate
        break
    if connection is None:
        raise ConnectFailed(str(failure) if failure is not None else "no address")
    try:
        connection.request("POST", target.request_target, body=body,
                           headers={"Host": target.host_header, **headers})
        response = connection.getresponse()
        response.read(MAX_ANSWER_BYTES)
        return int(response.status)
    finally:
        connection.close()
