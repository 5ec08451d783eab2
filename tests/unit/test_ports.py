"""The per-worker metrics port rule: several workers share a host with default settings."""

from __future__ import annotations

import errno
import socket

import pytest

from common.errors import ConfigError
from worker.ports import PORT_SPAN, bind_first_free, candidate_ports


def test_default_rule_skips_the_exporter_port() -> None:
    ports = candidate_ports(9400, 9401)
    assert ports[:3] == [9400, 9402, 9403]
    assert 9401 not in ports
    assert len(ports) == PORT_SPAN - 1
    assert ports[-1] == 9400 + PORT_SPAN - 1


def test_zero_means_an_os_chosen_port_and_the_range_stops_at_65535() -> None:
    assert candidate_ports(0, 9401) == [0]
    assert candidate_ports(65530, 9401) == list(range(65530, 65536))


def test_a_taken_port_moves_the_next_worker_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        first = taken.getsockname()[1]
        servers: list[socket.socket] = []

        def serve(port: int) -> int:
            sock = socket.socket()
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                raise
            sock.listen()
            servers.append(sock)
            return int(sock.getsockname()[1])

        try:
            bound = bind_first_free(serve, "127.0.0.1", first, exporter_port=first + 1)
            assert bound not in (first, first + 1)
            assert first + 2 <= bound < first + PORT_SPAN
            assert bind_first_free(serve, "127.0.0.1", 0, exporter_port=9401) > 0
        finally:
            for sock in servers:
                sock.close()


def test_every_port_taken_names_the_setting() -> None:
    def busy(port: int) -> int:
        raise OSError(errno.EADDRINUSE, "Address already in use")

    with pytest.raises(ConfigError, match="ZQ_METRICS_PORT: ports 9400-9431"):
        bind_first_free(busy, "127.0.0.1", 9400, 9401)


def test_an_address_that_cannot_be_bound_is_not_retried() -> None:
    tried: list[int] = []

    def unbindable(port: int) -> int:
        tried.append(port)
        raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")

    with pytest.raises(ConfigError, match="ZQ_METRICS_ADDR"):
        bind_first_free(unbindable, "10.9.9.9", 9400, 9401)
    assert tried == [9400]
