"""``zq dead-letters``: read (or clear) the broker messages workers refused to run.

With several shards (``ZQ_REDIS_SHARDS``) it reads and clears every shard's list: the count
is the fleet's, the listing merges them newest first and says which shard keeps each letter
(``shard N`` in the text, ``"shard"`` in ``--json``). With one shard the output is unchanged.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common.deadletters import DeadLetter, FleetDeadLetters
from common.settings import Settings


def add_command(commands: Any) -> None:
    """Register ``zq dead-letters``."""
    parser = commands.add_parser(
        "dead-letters", help="show broker messages no worker could run (newest first)")
    parser.add_argument("--limit", type=_positive_int, default=20,
                        help="how many to show (default 20)")
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line, with the body in base64")
    parser.add_argument("--clear", action="store_true", help="remove them all")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the newest dead letters, or clear the lists."""
    settings = Settings.from_env()
    store = FleetDeadLetters.from_urls(settings.shard_urls, settings.key_prefix,
                                       settings.dead_letter_max)
    sharded = len(store) > 1
    if args.clear:
        by_shard = store.clear()
        removed = sum(by_shard)
        if args.json:
            print(json.dumps({"cleared": removed, **({"by_shard": by_shard} if sharded else {})}))
        else:
            print(f"cleared {removed} dead letters" + (f" ({_per_shard(by_shard)})" if sharded
                                                       else ""))
        return 0
    letters = store.newest(args.limit)
    if args.json:
        for item in letters:
            print(json.dumps(item.to_dict() if sharded else item.letter.to_dict()))
        return 0
    counts = store.counts()
    print(f"{sum(counts)} dead letters" + (f" ({_per_shard(counts)})" if sharded else "")
          + (f", newest {len(letters)}:" if letters else ""))
    for item in letters:
        print((f"shard {item.shard}  " if sharded else "") + describe(item.letter))
    return 0


def _per_shard(counts: list[int]) -> str:
    return ", ".join(f"shard {index}: {count}" for index, count in enumerate(counts))


def describe(letter: DeadLetter, now: float | None = None) -> str:
    """One dead letter as two lines of text: what and why, then the start of its body."""
    now = time.time() if now is None else now
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(letter.at))
    task = f" task={letter.task}" if letter.task else ""
    size = f"{letter.body_size} bytes" + (", truncated" if letter.truncated else "")
    head = letter.body[:120]
    return (f"{when}Z  {letter.queue or '?'}  {letter.reason}: {letter.detail}\n"
            f"    worker={letter.worker} content-type={letter.content_type}{task} ({size}) "
            f"body={head!r}")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
