"""``zq status`` without a job id: the queues, the live workers and the dead letters.

With several shards (``ZQ_REDIS_SHARDS``) every shard is read: the queue rows and the
dead-letter count are the fleet's (counts add up, the oldest wait is the longest), workers
and dead letters say which shard they are on, and a table breaks the queues down by
shard. A shard that cannot be reached is named there and left out of the totals (the view
says so) instead of failing the whole view. With one shard the view is unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

import redis

from common.deadletters import DeadLetter, DeadLetterStore, FleetDeadLetters
from common.job import ModelType
from common.keys import Keys
from common.queueload import QueueLoad, fleet_loads, read_loads


def overview(client: redis.Redis | Sequence[redis.Redis], prefix: str,
             newest_letters: int = 5) -> dict[str, Any]:
    """What the queue looks like now, as JSON-ready data.

    ``client``: the Redis of the only shard, or of every shard in routing order.
    """
    clients = list(client) if isinstance(client, Sequence) else [client]
    if len(clients) == 1:
        return _one_shard(clients[0], prefix, newest_letters)
    return _shards(clients, prefix, newest_letters)


def _one_shard(client: redis.Redis, prefix: str, newest_letters: int) -> dict[str, Any]:
    letters = DeadLetterStore(client, prefix)
    return {
        "queues": [_queue_row(load) for load in read_loads(client, prefix)],
        "workers": _workers(client, prefix),
        "dead_letters": {
            "count": letters.count(),
            "newest": [_letter_row(letter) for letter in letters.newest(newest_letters)],
        },
    }


def _shards(clients: list[redis.Redis], prefix: str, newest_letters: int) -> dict[str, Any]:
    readings: list[list[QueueLoad]] = []
    breakdown: list[dict[str, Any]] = []
    workers: list[dict[str, Any]] = []
    stores: list[DeadLetterStore] = []
    letter_counts: list[int] = []
    for index, client in enumerate(clients):
        store = DeadLetterStore(client, prefix)
        try:
            loads = read_loads(client, prefix)
            shard_workers = _workers(client, prefix)
            dead = store.count()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            breakdown.append({"shard": index, "error": " ".join(str(exc).split())})
            continue
        readings.append(loads)
        stores.append(store)
        letter_counts.append(dead)
        workers.extend({**worker, "shard": index} for worker in shard_workers)
        breakdown.append({
            "shard": index, "waiting": sum(load.waiting for load in loads),
            "reserved": sum(load.reserved for load in loads),
            "running": sum(load.running for load in loads),
            "load": sum(load.load for load in loads),
            "workers": len(shard_workers), "dead_letters": dead,
            "oldest_waiting_s": round(max(load.oldest_waiting_s for load in loads), 1)})
    read = [row["shard"] for row in breakdown if "error" not in row]
    newest: list[dict[str, Any]] = []
    if stores:
        try:
            newest = [{**_letter_row(item.letter), "shard": read[item.shard]}
                      for item in FleetDeadLetters(stores).newest(newest_letters)]
        except (redis.ConnectionError, redis.TimeoutError):
            newest = []  # the shard went away since its count: the counts still stand
    return {
        "queues": [_queue_row(load) for load in fleet_loads(readings)],
        "workers": workers,
        "dead_letters": {"count": sum(letter_counts), "newest": newest},
        "shards": breakdown,
        "unreachable_shards": [row["shard"] for row in breakdown if "error" in row],
    }


def _queue_row(load: QueueLoad) -> dict[str, Any]:
    return {"model": load.model.value, "waiting": load.waiting, "reserved": load.reserved,
            "running": load.running, "workers": load.workers,
            "ready_workers": load.ready_workers,
            "oldest_waiting_s": round(load.oldest_waiting_s, 1)}


def _letter_row(letter: DeadLetter) -> dict[str, Any]:
    return {"reason": letter.reason, "detail": letter.detail, "queue": letter.queue,
            "task": letter.task, "worker": letter.worker, "at": letter.at,
            "body_size": letter.body_size}


def _workers(client: redis.Redis, prefix: str) -> list[dict[str, Any]]:
    keys = Keys(prefix)
    workers = []
    for model in ModelType:
        names = sorted(_text(n) for n in cast(set[Any], client.smembers(keys.workers(model))))
        for name in names:
            fields = {_text(k): _text(v) for k, v in cast(
                dict[Any, Any], client.hgetall(keys.worker(name))).items()}
            if not fields:
                continue  # its record expired: the worker stopped beating
            port = fields.get("metrics_port")
            workers.append({
                "name": name, "model": model.value, "host": fields.get("host"),
                "pid": int(fields["pid"]) if fields.get("pid") else None,
                "ready": fields.get("ready") == "1",
                "metrics": f"{fields.get('metrics_addr', '')}:{port}" if port else None,
                "current_job": fields.get("current_job") or None,
                "jobs_done": int(fields.get("jobs_done") or 0),
            })
    return workers


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def render(view: dict[str, Any], now: float | None = None) -> str:
    """The overview as the text ``zq status`` prints."""
    now = time.time() if now is None else now
    lines = ["queue   waiting  reserved  running  workers  ready  oldest"]
    for q in view["queues"]:
        lines.append(f"{q['model']:<7} {q['waiting']:>7}  {q['reserved']:>8}  {q['running']:>7}"
                     f"  {q['workers']:>7}  {q['ready_workers']:>5}  {q['oldest_waiting_s']}s")
    lines.append("")
    if view.get("shards"):
        lines.extend(_render_shards(view))
        lines.append("")
    if view["workers"]:
        lines.append("workers:")
    for w in view["workers"]:
        state = "ready" if w["ready"] else "loading"
        job = f"  running {w['current_job']}" if w["current_job"] else ""
        metrics = f"  metrics {w['metrics']}" if w["metrics"] else ""
        shard = f"  shard {w['shard']}" if "shard" in w else ""
        lines.append(f"  {w['name']}  {w['model']}{shard}  {state}  pid {w['pid']}"
                     f"{metrics}{job}")
    dead = view["dead_letters"]
    lines.append(f"dead letters: {dead['count']}"
                 + ("  (zq dead-letters shows them)" if dead["count"] else ""))
    for letter in dead["newest"]:
        age = max(now - letter["at"], 0.0)
        shard = f"shard {letter['shard']}  " if "shard" in letter else ""
        lines.append(f"  {age:.0f}s ago  {shard}{letter['queue'] or '?'}  {letter['reason']}: "
                     f"{letter['detail']}")
    return "\n".join(lines)


def _render_shards(view: dict[str, Any]) -> list[str]:
    lines = ["shard   waiting  reserved  running     load  workers  dead  oldest"]
    for s in view["shards"]:
        if "error" in s:
            lines.append(f"{s['shard']:<7} unreachable: {s['error']}")
            continue
        lines.append(f"{s['shard']:<7} {s['waiting']:>7}  {s['reserved']:>8}  {s['running']:>7}"
                     f"  {s['load']:>7}  {s['workers']:>7}  {s['dead_letters']:>4}"
                     f"  {s['oldest_waiting_s']}s")
    if view.get("unreachable_shards"):
        missing = view["unreachable_shards"]
        lines.append(f"the totals above leave out shard{'s' if len(missing) > 1 else ''} "
                     f"{', '.join(str(index) for index in missing)}: cannot be reached")
    return lines
