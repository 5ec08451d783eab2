"""Helpers shared by the benchmark scripts: machine info, Markdown tables, RESULTS.md.

Each benchmark owns one section of ``bench/RESULTS.md``, delimited by HTML comment
markers, and replaces only that section when it runs again.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import statistics
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADER = ("# Benchmark results\n\n"
          "Written by the scripts in `bench/`; each script replaces only its own section.\n"
          "Unless a section says otherwise, numbers are from tiny random-weight checkpoints on\n"
          "a CPU: compare the ratios within one run, not the absolute times.\n")

if str(ROOT) not in sys.path:  # ``tests.services`` is not installed, only the packages are
    sys.path.insert(0, str(ROOT))


def tiny_render_args(description: str, jobs: int) -> argparse.Namespace:
    """The options of the tiny-model render benchmarks: jobs, size, steps, torch threads."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-n", "--jobs", type=int, default=jobs, help="jobs per scenario")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args()


def mean_ms(values: Iterable[float]) -> float:
    """Mean of seconds, in milliseconds (NaN for no values)."""
    items = list(values)
    return statistics.fmean(items) * 1000 if items else float("nan")


def median_ms(values: Iterable[float]) -> float:
    """Median of seconds, in milliseconds (NaN for no values)."""
    items = list(values)
    return statistics.median(items) * 1000 if items else float("nan")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table; floats get two decimals."""
    def cell(value: object) -> str:
        return f"{value:.2f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_info() -> str:
    """One Markdown line describing where and when the numbers were taken."""
    import diffusers
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return (f"nproc {len(os.sched_getaffinity(0))} ({cpu}); python {platform.python_version()}; "
            f"torch {torch.__version__} (intra-op threads {torch.get_num_threads()}); "
            f"diffusers {diffusers.__version__}; git {commit} (+ working tree); "
            f"load average {os.getloadavg()[0]:.2f} (1 min, at the end); "
            f"{dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}")


def command_line() -> str:
    """The exact command this script was run with, relative to the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        shown = script.relative_to(ROOT).as_posix()
    except ValueError:
        shown = str(script)
    return shlex.join(["python", shown, *sys.argv[1:]])


def write_section(name: str, title: str, body: str, path: Path = RESULTS) -> None:
    """Print ``body`` and put it in ``path`` under ``title``, replacing any older run."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = (f"{begin}\n## {title}\n\n"
               f"Command: `{command_line()}`\n\nMachine: {machine_info()}\n\n"
               f"{body.strip()}\n{end}")
    print(section)
    text = path.read_text() if path.exists() else HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
