"""``zq exporter``: per-model queue load as Prometheus metrics, read from the broker."""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.deadletters import DeadLetterStore
from common.errors import ConfigError
from common.queueload import read_loads
from common.settings import Settings


class QueueLoadCollector(Collector):
    """Reads the broker at every scrape, so the numbers are never stale."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        """One gauge family per quantity, labelled by model type."""
        families = {
            "waiting": GaugeMetricFamily(
                "zq_queue_waiting", "Messages waiting in the queue, all priorities",
                labels=["model"]),
            "reserved": GaugeMetricFamily(
                "zq_queue_reserved", "Messages delivered to a worker and not yet acknowledged",
                labels=["model"]),
            "running": GaugeMetricFamily(
                "zq_queue_running", "Jobs claimed by a worker and running", labels=["model"]),
            "load": GaugeMetricFamily(
                "zq_queue_load", "Waiting plus reserved/running: what autoscaling follows",
                labels=["model"]),
            "oldest_waiting_s": GaugeMetricFamily(
                "zq_queue_oldest_waiting_seconds", "Age of the oldest waiting job",
                labels=["model"]),
            "workers": GaugeMetricFamily(
                "zq_workers", "Workers with a live heartbeat", labels=["model"]),
            "ready_workers": GaugeMetricFamily(
                "zq_workers_ready", "Workers with warm weights", labels=["model"]),
        }
        for load in read_loads(self.client, self.prefix):
            values = {"waiting": load.waiting, "reserved": load.reserved,
                      "running": load.running, "load": load.load,
                      "oldest_waiting_s": load.oldest_waiting_s, "workers": load.workers,
                      "ready_workers": load.ready_workers}
            for name, family in families.items():
                family.add_metric([load.model.value], values[name])
        yield from families.values()
        dead = GaugeMetricFamily("zq_dead_letters",
                                 "Broker messages in the dead-letter list (zq dead-letters)")
        dead.add_metric([], DeadLetterStore(self.client, self.prefix).count())
        yield dead


def add_command(commands: Any) -> None:
    """Register ``zq exporter``."""
    exporter = commands.add_parser("exporter", help="serve per-model queue load for Prometheus")
    exporter.add_argument("--port", type=port_number, help="default ZQ_EXPORTER_PORT or 9401")
    exporter.add_argument("--address", help="default ZQ_EXPORTER_ADDR or 127.0.0.1")
    exporter.set_defaults(handler=run_exporter)


def port_number(raw: str) -> int:
    """An argparse type: a TCP port, 1 to 65535."""
    try:
        port = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {raw!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 1 to 65535, got {port}")
    return port


def run_exporter(args: argparse.Namespace) -> int:
    """Serve ``/metrics`` until stopped."""
    settings = Settings.from_env()
    client = redis.Redis.from_url(settings.redis_url)
    registry = CollectorRegistry()
    registry.register(QueueLoadCollector(client, settings.key_prefix))
    port = args.port or settings.exporter_port
    address = args.address or settings.exporter_addr
    try:
        start_http_server(port, addr=address, registry=registry)
    except OSError as exc:  # taken, or an address this host does not have
        raise ConfigError(f"ZQ_EXPORTER_PORT/ZQ_EXPORTER_ADDR: cannot listen on "
                          f"{address}:{port}: {exc.strerror or exc}") from None
    print(f"zq exporter serving queue load on {address}:{port}/metrics", flush=True)
    while True:
        time.sleep(3600)
