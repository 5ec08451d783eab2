"""``zq dead-letters``: read (or clear) the broker messages workers refused to run."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from common.deadletters import DeadLetter, DeadLetterStore
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
    """Print the newest dead letters, or clear the list."""
    settings = Settings.from_env()
    store = DeadLetterStore.from_url(settings.redis_url, settings.key_prefix,
                                     settings.dead_letter_max)
    if args.clear:
        removed = store.clear()
        print(json.dumps({"cleared": removed}) if args.json else f"cleared {removed} dead letters")
        return 0
    letters = store.newest(args.limit)
    if args.json:
        for letter in letters:
            print(json.dumps(letter.to_dict()))
        return 0
    print(f"{store.count()} dead letters" + (f", newest {len(letters)}:" if letters else ""))
    for letter in letters:
        print(describe(letter))
    return 0


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
