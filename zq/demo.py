"""``zq demo``: a four-turn image conversation through the real queue, on any machine.

With nothing configured it starts an embedded Redis server, keeps results in a local
directory and builds tiny random-weight models, then runs three real worker
processes (turbo, edit, base). With ``ZQ_REDIS_URL``, ``ZQ_STORAGE_URL`` and
``ZQ_MODEL_*`` set it runs the same conversation against those instead. With ``--serve``
it then keeps everything running behind the HTTP API and its conversation page.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from common.errors import ConfigError
from common.job import ModelType
from common.settings import Settings
from common.status import JobRecord, JobStatus
from producer.client import Client
from producer.contact_sheet import Tile, contact_sheet
from producer.conversation import Conversation
from zq.exporter import port_number
from zq.processes import die_with_parent

TURNS = (
    "a night view of a futuristic city",
    "brighter, add neon signs and flying cars",
    "make the building on the left Chinese-style with flying eaves",
)
HD_PROMPT = ("a bright night view of a futuristic city with neon signs and flying cars, "
             "the building on the left Chinese-style with flying eaves, highly detailed")


def add_command(commands: Any) -> None:
    """Register ``zq demo``."""
    demo = commands.add_parser("demo", help="run a four-turn conversation end to end")
    demo.add_argument("--out", type=Path, default=Path("zq-demo"), help="output directory")
    demo.add_argument("--size", type=int, default=None,
                      help="side in pixels (default 256 on tiny models, 1024 on real ones)")
    demo.add_argument("--seed", type=int, default=42)
    demo.add_argument("--timeout", type=float, default=900.0)
    demo.add_argument("--serve", action="store_true",
                      help="then serve the conversation page (and the API) until Ctrl-C")
    demo.add_argument("--port", type=port_number, default=8000,
                      help="first port to try for --serve (default 8000; the next free one "
                           "if taken)")
    demo.set_defaults(handler=run_demo)


@dataclass
class Environment:
    """What the demo started and must stop."""

    settings: Settings
    env: dict[str, str]
    tiny: bool
    stoppers: list[Any]


def prepare(out: Path) -> Environment:
    """Configured services where given, embedded ones otherwise."""
    env = dict(os.environ)
    stoppers: list[Any] = []
    if "ZQ_REDIS_URL" not in env:
        from zq.embedded_redis import start_redis

        server = start_redis(out / "redis")
        stoppers.append(server.stop)
        env["ZQ_REDIS_URL"] = server.url
    env.setdefault("ZQ_STORAGE_URL", (out / "storage").resolve().as_uri())
    tiny = not any(f"ZQ_MODEL_{m.value.upper()}" in env for m in ModelType)
    if tiny:
        from worker.tiny_models import make_tiny_models

        for model, path in make_tiny_models(out / "models").items():
            env[f"ZQ_MODEL_{model.upper()}"] = str(path.resolve())
    return Environment(Settings.from_env(env), env, tiny, stoppers)


def start_workers(environment: Environment, logs: Path) -> list[subprocess.Popen[bytes]]:
    """One real worker process per model type, as ``zq worker`` starts them."""
    logs.mkdir(parents=True, exist_ok=True)
    # Three workers share this machine: no metrics ports to collide on.
    env = {**environment.env, "ZQ_METRICS_PORT": "0"}
    workers = []
    for model in ModelType:
        with (logs / f"worker-{model.value}.log").open("wb") as log:
            # A demo killed outright (SIGKILL) must not leave its workers behind.
            workers.append(subprocess.Popen(
                [sys.executable, "-m", "zq", "worker", "--model", model.value],
                env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent()))
    return workers


def wait_all(client: Client, job_ids: list[str], workers: list[subprocess.Popen[bytes]],
             logs: Path, timeout_s: float) -> list[JobRecord]:
    """Wait for every job; stop early, pointing at the log, if a worker process died."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = [client.status(job_id) for job_id in job_ids]
        if all(r.status.terminal for r in records):
            return records
        for model, worker in zip(ModelType, workers, strict=True):
            if worker.poll() is not None:
                raise RuntimeError(f"the {model.value} worker exited with {worker.returncode}; "
                                   f"see {logs / f'worker-{model.value}.log'}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"jobs not finished after {timeout_s}s; see the logs in {logs}")
        time.sleep(0.2)


def left_third_mask(side: int) -> bytes:
    """A mask whose left third is white (may change) and the rest black (kept)."""
    mask = Image.new("L", (side, side), 0)
    mask.paste(255, (0, 0, side // 3, side))
    out = io.BytesIO()
    mask.save(out, format="PNG")
    return out.getvalue()


def run_demo(args: argparse.Namespace) -> int:
    """Submit the whole conversation, start the workers, wait, print and draw the results."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    environment = prepare(out)
    side = args.size or (256 if environment.tiny else 1024)
    client = Client(replace(environment.settings))
    if environment.tiny:
        print("using tiny random-weight models: the pictures are noise, the machinery is real")
    workers: list[subprocess.Popen[bytes]] = []
    try:
        chat = Conversation(client, width=side, height=side, seed=args.seed)
        chat.say(TURNS[0])
        chat.say(TURNS[1])
        chat.say(TURNS[2], mask=left_third_mask(side))
        chat.refine(HD_PROMPT, width=side * 2, height=side * 2)
        print(f"submitted {len(chat.turns)} turns of conversation {chat.conversation_id}; "
              "starting workers")
        workers = start_workers(environment, out / "logs")
        records = wait_all(client, [t.job_id for t in chat.turns], workers, out / "logs",
                           args.timeout)
        code = report(client, records, [TURNS[0], TURNS[1], TURNS[2], "HD redraw"], out)
        if args.serve:
            serve_page(client, args.port, chat.conversation_id)
        else:
            print("to continue it in a browser: zq demo --serve (the conversation page)")
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(60)
        for stop in environment.stoppers:
            stop()
    return code


def serve_page(client: Client, first_port: int, conversation_id: str) -> None:
    """Serve the API and its conversation page on loopback until Ctrl-C or SIGTERM."""
    try:
        import uvicorn

        from producer.api.app import create_app
        from producer.api.auth import ApiKeys
    except ImportError as exc:  # installed without the api extra
        raise ConfigError(f"zq demo --serve needs the api extra "
                          f"(pip install 'zimage-queue[api]'): {exc}") from None
    listener = bind_loopback(first_port)
    port = listener.getsockname()[1]
    print(f"conversation page: http://127.0.0.1:{port}/#c={conversation_id} "
          "(Ctrl-C stops the demo)", flush=True)
    # Loopback only and no keys: the page is for the person at this machine.
    app = create_app(client.settings, client, ApiKeys())
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    # uvicorn stops on SIGINT/SIGTERM, then raises the signal again with the handler it
    # found: make that an interrupt we catch, so the caller still stops the workers.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run(sockets=[listener])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("stopped serving; stopping the workers", flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def bind_loopback(first_port: int, tries: int = 20) -> socket.socket:
    """A listening socket on 127.0.0.1 at ``first_port`` or the next free port after it."""
    for port in range(first_port, min(first_port + tries, 65536)):
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", port))
        except OSError:
            listener.close()
            continue
        listener.listen(128)
        return listener
    raise ConfigError(f"--port: no free port in {first_port}-{first_port + tries - 1}")


def report(client: Client, records: list[JobRecord], captions: list[str], out: Path) -> int:
    """Print the table of turns and write the captioned contact sheet."""
    print(f"{'turn':<5}{'job':<34}{'model':<7}{'parent':<34}{'seconds':>8}  output")
    tiles = []
    for turn, record in enumerate(records, start=1):
        seconds = (record.finished_at or 0) - (record.started_at or record.finished_at or 0)
        output = record.image or f"{record.status.value}: {record.error}"
        print(f"{turn:<5}{record.spec.job_id:<34}{record.spec.model.value:<7}"
              f"{record.spec.parent_id or '-':<34}{seconds:>8.2f}  {output}")
        if record.status is JobStatus.SUCCEEDED and record.image:
            image = client.store.get(record.image)
            caption = (f"{turn}. {record.spec.model.value} {record.width}x{record.height}: "
                       f"{captions[turn - 1]}")
            tiles.append(Tile(image, caption))
    print(f"results in {client.store.describe()}")
    if tiles:
        sheet = out / "contact-sheet.png"
        sheet.write_bytes(contact_sheet(tiles))
        print(f"contact sheet: {sheet}")
    ok = all(r.status is JobStatus.SUCCEEDED for r in records)
    return 0 if ok else 1
