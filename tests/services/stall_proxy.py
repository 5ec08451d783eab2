"""A TCP proxy that can stall: storage that hangs mid-request, on demand, for fault tests.

Clients connect to ``proxy.port`` on 127.0.0.1; bytes are relayed to the target. While
stalled, nothing moves in either direction (bytes wait, nothing is dropped), as when a
storage endpoint stops answering; ``resume()`` lets the waiting bytes through. While
``down()``, connections are reset and refused, as in an outage, until ``up()``.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field


@dataclass
class StallProxy:
    """Relays 127.0.0.1:``port`` to ``target``; ``stall()`` and ``resume()`` control it."""

    target: tuple[str, int]
    port: int = 0
    flowing: threading.Event = field(default_factory=threading.Event)
    refusing: threading.Event = field(default_factory=threading.Event)
    _listener: socket.socket | None = None
    _closed: threading.Event = field(default_factory=threading.Event)
    _sockets: list[socket.socket] = field(default_factory=list)

    def start(self) -> StallProxy:
        """Listen and relay in background threads; returns self."""
        self.flowing.set()
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="stall-proxy",
                         daemon=True).start()
        return self

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def stall(self) -> None:
        """Hold every byte in both directions from now on."""
        self.flowing.clear()

    def resume(self) -> None:
        """Let bytes through again."""
        self.flowing.set()

    def down(self) -> None:
        """An outage: open connections are reset and new ones refused until ``up()``."""
        self.refusing.set()
        self._drop_connections()

    def up(self) -> None:
        """The outage is over: connections are relayed again."""
        self.refusing.clear()

    def _drop_connections(self) -> None:
        sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()

    def close(self) -> None:
        """Stop listening and drop every connection."""
        self._closed.set()
        self.flowing.set()
        for sock in [self._listener, *self._sockets]:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while not self._closed.is_set():
            try:
                client, _ = listener.accept()
                if self.refusing.is_set():
                    # Reset at once, as a load balancer with no healthy backend does.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
                    client.close()
                    continue
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                # Stalled: hold the bytes until resumed, as a hung server would.
                while not self.flowing.wait(0.1):
                    if self._closed.is_set():
                        return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
