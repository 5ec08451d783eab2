"""``zq batch MANIFEST``, ``zq batch status BATCH``, ``zq batch cancel BATCH``."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from common.status import TERMINAL
from producer.batch import Batches, BatchWatch, RowResult, write_results
from producer.client import Client
from producer.contact_sheet import Tile, contact_sheet
from producer.manifest import ReadOptions, parse_columns

DONE = {s.value for s in TERMINAL} | {"invalid"}
EXIT_USAGE = 2
DEFAULT_OPTIONS = ("prompt", "model", "width", "height", "strength", "steps", "guidance",
                   "seed", "priority", "output_format", "quality", "negative_prompt", "mask",
                   "adapters")


def add_command(commands: Any) -> None:
    """Register ``zq batch``."""
    batch = commands.add_parser(
        "batch", help="bulk edit a catalogue: zq batch MANIFEST | status BATCH | cancel BATCH",
        description="Submit a CSV/JSONL manifest (sku, image, prompt, ...) as one batch; "
                    "or `zq batch status BATCH` / `zq batch cancel BATCH`.")
    batch.add_argument("target", nargs="+", metavar="MANIFEST | status BATCH | cancel BATCH")
    for name in ("prompt", "model", "negative_prompt", "mask"):
        batch.add_argument(f"--{name.replace('_', '-')}", dest=name,
                           help=f"default {name} for rows that have none")
    for name in ("width", "height", "steps", "seed", "priority", "quality"):
        batch.add_argument(f"--{name}", type=int, help=f"default {name}")
    for name in ("strength", "guidance"):
        batch.add_argument(f"--{name}", type=float, help=f"default {name}")
    batch.add_argument("--format", dest="output_format", help="png, webp or jpeg")
    batch.add_argument("--adapter", dest="adapters", action="append", metavar="NAME[:WEIGHT]",
                       help="a registered LoRA adapter for rows that name none (repeatable)")
    batch.add_argument("--columns", action="append", default=[], metavar="FIELD=COLUMN,...",
                       help="read a field from a differently named column, e.g. "
                            "'sku=Handle,image=Image Src' (repeatable)")
    batch.add_argument("--delimiter", help="CSV delimiter (default: detected from the header; "
                                           "'tab' for tabs)")
    batch.add_argument("--encoding", default="utf-8-sig",
                       help="manifest text encoding (default UTF-8, with or without Excel's "
                            "byte-order mark; e.g. cp1252 for older Windows Excel)")
    batch.add_argument("--batch-id", help="name the batch (default: derived from the content)")
    batch.add_argument("--webhook", help="URL to POST the results manifest to when done")
    batch.add_argument("--results", type=Path, help="results manifest path (.csv or .jsonl)")
    batch.add_argument("--no-wait", action="store_true", help="submit and return")
    batch.add_argument("--timeout", type=float, default=86400.0)
    batch.add_argument("--json", action="store_true", help="status: print JSON")
    batch.add_argument("--sheet", type=Path,
                       help="write a contact sheet PNG of the finished images, captioned by SKU")
    batch.set_defaults(handler=run)


def run(client: Client, args: argparse.Namespace) -> int:
    """Dispatch the three forms of ``zq batch``."""
    batches = Batches(client)
    first, rest = args.target[0], args.target[1:]
    if first in {"status", "cancel"} and len(rest) == 1 and not Path(first).exists():
        return _status(batches, rest[0], args) if first == "status" else _cancel(batches, rest[0])
    if rest:
        print("zq batch: error: expected MANIFEST, status BATCH or cancel BATCH, got "
              f"{' '.join(args.target)!r}", file=sys.stderr)
        return EXIT_USAGE
    return _submit(batches, Path(first), args)


def read_options(args: argparse.Namespace) -> ReadOptions:
    """How to read the manifest, from ``--columns``, ``--delimiter`` and ``--encoding``."""
    delimiter = {"tab": "\t", "\\t": "\t"}.get(args.delimiter or "", args.delimiter)
    return ReadOptions(parse_columns(args.columns), delimiter, args.encoding)


def _submit(batches: Batches, manifest: Path, args: argparse.Namespace) -> int:
    defaults = {n: getattr(args, n) for n in DEFAULT_OPTIONS if getattr(args, n) is not None}
    if "mask" in defaults and Path(defaults["mask"]).is_file():
        # Row paths are relative to the manifest; a command-line path to the working dir.
        defaults["mask"] = str(Path(defaults["mask"]).resolve())
    submission = batches.submit(manifest, defaults, args.webhook, args.batch_id,
                                read_options(args))
    for note in submission.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"batch {submission.batch_id}: {submission.jobs} jobs, "
          f"{len(submission.errors)} rows refused", file=sys.stderr)
    for error in submission.errors:
        print(f"  line {error.line}: {error.sku or '-'}: {error.reason}", file=sys.stderr)
    if args.no_wait:
        print(submission.batch_id)
        return 0
    results = follow(batches, submission.batch_id, args.timeout, sys.stderr)
    path = args.results or manifest.with_name(f"{manifest.stem}.results.csv")
    final = batches.results(submission.batch_id)
    write_results(final, path)
    print(f"results: {path}", file=sys.stderr)
    if args.sheet:
        write_sheet(batches, final, args.sheet)
        print(f"contact sheet: {args.sheet}", file=sys.stderr)
    print(submission.batch_id)
    return 0 if all(r.status == "succeeded" for r in results) else 1


def follow(batches: Batches, batch_id: str, timeout_s: float, out: TextIO) -> list[RowResult]:
    """Show progress until every row has ended; a bar on a terminal, lines otherwise.

    Rows are read once; then the batch's channel names each job that ends and only
    those are read again (:class:`producer.batch.BatchWatch`), so a tick costs O(changes)
    however large the batch.
    """
    started = time.monotonic()
    interactive = out.isatty()
    last_line = 0.0
    with BatchWatch(batches, batch_id) as watch:
        while True:
            results, counts = list(watch.results), watch.counts
            finished = sum(n for status, n in counts.items() if status in DONE)
            line = _progress_line(counts, finished, len(results), time.monotonic() - started)
            if interactive:
                out.write("\r" + line.ljust(100))
                out.flush()
            elif time.monotonic() - last_line >= 10 or finished == len(results):
                out.write(line + "\n")
                last_line = time.monotonic()
            if finished == len(results):
                if interactive:
                    out.write("\n")
                return results
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"batch {batch_id}: {finished}/{len(results)} ended "
                                   f"after {timeout_s}s")
            # A redraw (ETA) every tick; Redis is read only for what the channel named.
            watch.update(0.5)


def _progress_line(counts: Counter[str], finished: int, total: int, elapsed_s: float) -> str:
    width = 30
    filled = width * finished // max(total, 1)
    bar = "#" * filled + "." * (width - filled)
    eta = "?"
    done_here = counts.get("succeeded", 0) + counts.get("failed", 0)
    if done_here > 0 and finished < total:
        eta = f"{(total - finished) * elapsed_s / done_here:.0f}s"
    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    return f"[{bar}] {finished}/{total} ended ({parts}) ETA {eta}"


def write_sheet(batches: Batches, results: list[RowResult], path: Path,
                limit: int = 400) -> int:
    """A contact sheet of the batch's finished images (the first ``limit``); returns how many."""
    done = [r for r in results if r.status == "succeeded" and r.image][:limit]
    if not done:
        return 0
    tiles = [Tile(batches.client.store.get(r.image or ""), f"{r.sku} (line {r.line})")
             for r in done]
    path.write_bytes(contact_sheet(tiles, thumb_px=160, columns=8, caption_lines=2))
    return len(tiles)


def _status(batches: Batches, batch_id: str, args: argparse.Namespace) -> int:
    results = batches.results(batch_id)
    counts = Counter(r.status for r in results)
    if args.results:
        write_results(results, args.results)
    if args.sheet:
        print(f"contact sheet: {args.sheet} ({write_sheet(batches, results, args.sheet)} "
              "images)", file=sys.stderr)
    if args.json:
        print(json.dumps({"batch_id": batch_id, "rows": len(results), "counts": counts,
                          "finished_at": batches.store(batch_id).finished_at(batch_id)}))
    else:
        print(f"batch {batch_id}: {len(results)} rows: "
              + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return 0


def _cancel(batches: Batches, batch_id: str) -> int:
    print(f"batch {batch_id}: cancelled {batches.cancel(batch_id)} jobs")
    return 0
