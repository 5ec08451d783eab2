"""``zq exporter``: per-model queue load as Prometheus metrics, read from the broker.

One shard (no ``ZQ_REDIS_SHARDS``, or one URL in it): the ``zq_queue_*``, ``zq_workers*``
and ``zq_dead_letters`` families of that Redis, and nothing else; a Redis that cannot be
read fails the scrape (Prometheus marks the target down, KEDA falls back).

Several shards: every shard is read at each scrape (in parallel, within
``SCRAPE_DEADLINE_S``), and the exporter serves

- ``zq_shard_up{shard}``: 1 when the shard was read at this scrape, 0 when it was not;
- for each shard read, the same quantities as ``zq_shard_*{model,shard}`` (``zq_shard_queue_load``,
  ``zq_shard_queue_waiting``, ... and ``zq_shard_dead_letters{shard}``): what each shard's
  own autoscaling follows, since a worker serves one shard;
- the fleet totals under today's names (``zq_queue_load{model}`` ...): counts add up over the
  shards, ``zq_queue_oldest_waiting_seconds`` is the longest wait of any shard.

A shard that cannot be read is not a scrape failure (the other shards' series are still
right), but its numbers are unknown, so its ``zq_shard_*`` series and every fleet total are
left out until it is read again; ``zq_shard_up`` says which one. A total that silently left
out a shard would understate the fleet's load and let an autoscaler (or a person) scale down
a fleet that is busy; an absent series is what KEDA's Prometheus scaler and ``absent()``
alerts treat as "no data", so a shard's ScaledObject (``max(zq_shard_queue_load{shard=...})``)
uses its fallback replicas while the others keep following their own shard.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from common.deadletters import DeadLetterStore
from common.errors import ConfigError
from common.queueload import QueueLoad, fleet_loads, read_loads
from common.settings import Settings
from common.webhooks import redact_url

log = logging.getLogger(__name__)

# With several shards: a shard not read within this many seconds counts as down for the
# scrape (Prometheus' default scrape timeout is 10 s), and its Redis calls give up after
# SHARD_TIMEOUT_S, so a black-holed shard never holds a thread for long.
SCRAPE_DEADLINE_S = 5.0
SHARD_TIMEOUT_S = 5.0

# (quantity, metric name after "zq_" or "zq_shard_", help): one gauge family each.
QUANTITIES = (
    ("waiting", "queue_waiting", "Messages waiting in the queue, all priorities"),
    ("reserved", "queue_reserved", "Messages delivered to a worker and not yet acknowledged"),
    ("running", "queue_running", "Jobs claimed by a worker and running"),
    ("load", "queue_load", "Waiting plus reserved/running: what autoscaling follows"),
    ("oldest_waiting_s", "queue_oldest_waiting_seconds", "Age of the oldest waiting job"),
    ("workers", "workers", "Workers with a live heartbeat"),
    ("ready_workers", "workers_ready", "Workers with warm weights"),
)
DEAD_LETTERS_HELP = "Broker messages in the dead-letter list (zq dead-letters)"


@dataclass(frozen=True)
class ShardReading:
    """One shard's broker, read at one scrape."""

    loads: list[QueueLoad]
    dead_letters: int


class QueueLoadCollector(Collector):
    """Reads the broker at every scrape, so the numbers are never stale.

    ``client``: the Redis of the only shard, or of every shard in routing order.
    """

    def __init__(self, client: redis.Redis | Sequence[redis.Redis], prefix: str) -> None:
        self.clients = list(client) if isinstance(client, Sequence) else [client]
        if not self.clients:
            raise ValueError("at least one Redis is needed")
        self.client = self.clients[0]
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        """One gauge family per quantity, labelled by model type (and shard, see above)."""
        if len(self.clients) == 1:
            yield from _fleet_families(read_loads(self.client, self.prefix),
                                       DeadLetterStore(self.client, self.prefix).count())
            return
        readings = self._read_shards()
        up = GaugeMetricFamily("zq_shard_up", "1 if the shard's Redis was read at this "
                               "scrape; 0 leaves out its zq_shard_* series and the totals",
                               labels=["shard"])
        for index, reading in enumerate(readings):
            up.add_metric([str(index)], 0 if reading is None else 1)
        yield up
        yield from _shard_families(readings)
        if all(reading is not None for reading in readings):
            complete = [reading for reading in readings if reading is not None]
            yield from _fleet_families(fleet_loads([r.loads for r in complete]),
                                       sum(r.dead_letters for r in complete))

    def read_shard(self, index: int) -> ShardReading:
        """Read one shard (raises what its Redis raises)."""
        client = self.clients[index]
        return ShardReading(read_loads(client, self.prefix),
                            DeadLetterStore(client, self.prefix).count())

    def _read_shards(self) -> list[ShardReading | None]:
        """Every shard's reading, in shard order; None for one not read in time."""
        pool = ThreadPoolExecutor(max_workers=min(len(self.clients), 16),
                                  thread_name_prefix="zq-exporter-shard")
        try:
            futures = [pool.submit(self.read_shard, index) for index in range(len(self.clients))]
            wait(futures, timeout=SCRAPE_DEADLINE_S)
            readings: list[ShardReading | None] = []
            for index, future in enumerate(futures):
                if not future.done():
                    future.cancel()
                    log.warning("shard %d not read within %.0f s: left out of this scrape",
                                index, SCRAPE_DEADLINE_S)
                    readings.append(None)
                elif (error := future.exception()) is not None:
                    log.warning("shard %d cannot be read, left out of this scrape: %s",
                                index, error)
                    readings.append(None)
                else:
                    readings.append(future.result())
            return readings
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _value(load: QueueLoad, quantity: str) -> float:
    return float(getattr(load, quantity))


def _fleet_families(loads: Sequence[QueueLoad], dead_letters: int) -> Iterator[Metric]:
    """Today's families: one sample per model, and the dead-letter count."""
    for quantity, name, text in QUANTITIES:
        family = GaugeMetricFamily(f"zq_{name}", text, labels=["model"])
        for load in loads:
            family.add_metric([load.model.value], _value(load, quantity))
        yield family
    dead = GaugeMetricFamily("zq_dead_letters", DEAD_LETTERS_HELP)
    dead.add_metric([], dead_letters)
    yield dead


def _shard_families(readings: list[ShardReading | None]) -> Iterator[Metric]:
    """The same quantities per shard read (a shard not read has no series)."""
    for quantity, name, text in QUANTITIES:
        family = GaugeMetricFamily(f"zq_shard_{name}", f"{text}, on one shard",
                                   labels=["model", "shard"])
        for index, reading in enumerate(readings):
            for load in reading.loads if reading is not None else []:
                family.add_metric([load.model.value, str(index)], _value(load, quantity))
        yield family
    dead = GaugeMetricFamily("zq_shard_dead_letters", f"{DEAD_LETTERS_HELP}, on one shard",
                             labels=["shard"])
    for index, reading in enumerate(readings):
        if reading is not None:
            dead.add_metric([str(index)], reading.dead_letters)
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


def shard_clients(settings: Settings) -> list[redis.Redis]:
    """A client per shard: as before with one; with several, each with timeouts."""
    if len(settings.shard_urls) == 1:
        return [redis.Redis.from_url(settings.shard_urls[0])]
    clients = []
    for url in settings.shard_urls:
        try:
            clients.append(redis.Redis.from_url(url, socket_connect_timeout=SHARD_TIMEOUT_S,
                                                socket_timeout=SHARD_TIMEOUT_S))
        except ValueError as exc:  # redis-py's verdict on a malformed URL
            raise ConfigError(f"ZQ_REDIS_SHARDS: {redact_url(url)}: {exc}") from None
    return clients


def run_exporter(args: argparse.Namespace) -> int:
    """Serve ``/metrics`` until stopped."""
    settings = Settings.from_env()
    registry = CollectorRegistry()
    registry.register(QueueLoadCollector(shard_clients(settings), settings.key_prefix))
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
