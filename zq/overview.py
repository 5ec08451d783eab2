"""``zq status`` without a job id: the queues, the live workers and the dead letters."""

from __future__ import annotations

import time
from typing import Any, cast

import redis

from common.deadletters import DeadLetterStore
from common.job import ModelType
from common.keys import Keys
from common.queueload import read_loads


def overview(client: redis.Redis, prefix: str, newest_letters: int = 5) -> dict[str, Any]:
    """What the queue looks like now, as JSON-ready data."""
    queues = [{"model": load.model.value, "waiting": load.waiting, "reserved": load.reserved,
               "running": load.running, "workers": load.workers,
               "ready_workers": load.ready_workers,
               "oldest_waiting_s": round(load.oldest_waiting_s, 1)}
              for load in read_loads(client, prefix)]
    letters = DeadLetterStore(client, prefix)
    return {
        "queues": queues,
        "workers": _workers(client, prefix),
        "dead_letters": {
            "count": letters.count(),
            "newest": [{"reason": letter.reason, "detail": letter.detail,
                        "queue": letter.queue, "task": letter.task, "worker": letter.worker,
                        "at": letter.at, "body_size": letter.body_size}
                       for letter in letters.newest(newest_letters)],
        },
    }


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
    if view["workers"]:
        lines.append("workers:")
    for w in view["workers"]:
        state = "ready" if w["ready"] else "loading"
        job = f"  running {w['current_job']}" if w["current_job"] else ""
        metrics = f"  metrics {w['metrics']}" if w["metrics"] else ""
        lines.append(f"  {w['name']}  {w['model']}  {state}  pid {w['pid']}{metrics}{job}")
    dead = view["dead_letters"]
    lines.append(f"dead letters: {dead['count']}"
                 + ("  (zq dead-letters shows them)" if dead["count"] else ""))
    for letter in dead["newest"]:
        age = max(now - letter["at"], 0.0)
        lines.append(f"  {age:.0f}s ago  {letter['queue'] or '?'}  {letter['reason']}: "
                     f"{letter['detail']}")
    return "\n".join(lines)
