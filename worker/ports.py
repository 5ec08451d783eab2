"""Which port a worker's ``/metrics`` listens on, so several workers share a host.

The rule: ``ZQ_METRICS_PORT`` (default 9400) if it is free, else the next free port
upward, skipping the exporter's port, trying at most ``PORT_SPAN`` ports (9400, 9402,
9403, ... 9431 by default). ``ZQ_METRICS_PORT=0`` lets the OS choose a free port. The
port actually bound is logged and recorded in the worker's registry entry.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from common.errors import ConfigError

PORT_SPAN = 32


def candidate_ports(port: int, exporter_port: int, span: int = PORT_SPAN) -> list[int]:
    """The ports a worker tries, in order: ``[0]`` for an OS-chosen one."""
    if port == 0:
        return [0]
    return [p for p in range(port, min(port + span, 65536)) if p != exporter_port]


def bind_first_free(serve: Callable[[int], int], address: str, port: int,
                    exporter_port: int, span: int = PORT_SPAN) -> int:
    """Call ``serve`` on each candidate port until one binds; returns the bound port.

    ``serve`` binds ``address:port`` and returns the bound port (the OS's choice for 0).
    Raises ``ConfigError`` naming ``ZQ_METRICS_PORT`` when every candidate is taken.
    """
    candidates = candidate_ports(port, exporter_port, span)
    for candidate in candidates:
        try:
            return serve(candidate)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise ConfigError(f"cannot serve metrics on {address}:{candidate}: {exc} "
                                  "(ZQ_METRICS_ADDR, ZQ_METRICS_PORT)") from exc
    raise ConfigError(f"ZQ_METRICS_PORT: ports {candidates[0]}-{candidates[-1]} on {address} "
                      "are all in use; set ZQ_METRICS_PORT to a free range, or 0 for any "
                      "free port")
