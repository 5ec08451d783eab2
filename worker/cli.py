"""Worker commands: ``zq worker`` and ``zq make-tiny-models``."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path
from typing import Any

from common.job import ModelType
from common.queueing import queue_name


def add_commands(commands: Any) -> None:
    """Register the worker subcommands on an argparse subparsers object."""
    worker = commands.add_parser("worker", help="run a GPU worker pinned to one model type")
    worker.add_argument("--model", required=True, choices=[m.value for m in ModelType])
    worker.add_argument("--name", help="worker name (default: zq-MODEL@HOST-PID)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=run_worker)

    health = commands.add_parser(
        "health", help="probe this host's worker: exit 0 if alive (with --ready: and warm)")
    health.add_argument("--model", required=True, choices=[m.value for m in ModelType])
    health.add_argument("--ready", action="store_true", help="also require warm weights")
    health.set_defaults(handler=probe_health)

    tiny = commands.add_parser("make-tiny-models",
                               help="write tiny random-weight checkpoints (tests, demos)")
    tiny.add_argument("directory", type=Path)
    tiny.add_argument("--real-shape", action="store_true",
                      help="instead, one bfloat16 checkpoint with the released models' widths "
                           "and reduced depth (~1.7 GB), served as turbo, edit and base")
    tiny.add_argument("--layers", type=_positive_int, default=None,
                      help="with --real-shape: transformer blocks to keep (default 1)")
    tiny.add_argument("--safety", action="store_true",
                      help="also a tiny safety classifier (DIRECTORY/safety) for ZQ_SAFETY_MODEL: "
                           "'nsfw' scores 0.5 on every image")
    tiny.set_defaults(handler=make_tiny)


def worker_argv(model: ModelType, name: str, loglevel: str,
                task_events: bool = True) -> list[str]:
    """The Celery worker command line ``zq worker`` runs (solo pool, one queue, events)."""
    return ["worker", "-Q", queue_name(model), "--pool=solo", "--concurrency=1",
            *(["--task-events"] if task_events else []), "--hostname", name,
            "--loglevel", loglevel, "--without-mingle", "--without-gossip"]


def run_worker(args: argparse.Namespace) -> int:
    """Start a Celery worker in this process; SIGTERM lets the running job finish first.

    Exits 0 after a normal shutdown (SIGTERM); non-zero when the worker stopped for an
    error: Celery's code (1 for an unrecoverable error or a broker it gave up on), 70 when
    its model changed, 75 when a job stopped advancing (``worker.watchdog``), 78 when it
    cannot start.
    """
    model = ModelType(args.model)
    os.environ["ZQ_WORKER_MODEL"] = model.value
    name = args.name or f"zq-{model.value}@{socket.gethostname()}-{os.getpid()}"
    from worker import celery_app

    code = start_celery(celery_app.app, worker_argv(model, name, args.loglevel,
                                                    celery_app.settings.task_events))
    return exit_status(celery_app.exit_code, code)


def start_celery(app: Any, argv: list[str]) -> object:
    """Run Celery's command line like ``app.worker_main``, returning its exit code.

    ``worker_main`` (and ``app.start``) drop the code the worker exits with; this is the
    same call, keeping it.
    """
    from celery.bin.celery import celery
    from click.exceptions import Exit

    celery.params[0].default = app
    try:
        return celery.main(args=argv, standalone_mode=False)
    except Exit as exc:
        return exc.exit_code
    finally:
        celery.params[0].default = None


def exit_status(requested: int, celery_code: object) -> int:
    """The process exit code: one a job asked for, else Celery's (None and 0 mean 0)."""
    if requested:
        return requested
    if isinstance(celery_code, int):
        return celery_code
    return 0 if celery_code in (None, "", False) else 1


def probe_health(args: argparse.Namespace) -> int:
    """Read the worker's health file: 0 healthy, 1 not (with the reason on stdout)."""
    from worker.health import health_path, read_health
    from worker.watchdog import EXIT_STALLED

    path = health_path(ModelType(args.model))
    health = read_health(path)
    if health is None:
        print(f"not alive: no health file at {path}")
        return 1
    if health.stalled:
        print(f"stalled: {health.stalled}; worker pid {health.pid} exits {EXIT_STALLED}")
        return 1
    if not health.alive():
        print(f"not alive: last heartbeat {health.heartbeat:.0f}, pid {health.pid}")
        return 1
    if args.ready and not health.ready:
        print(f"alive, not ready: {health.model} weights still loading")
        return 1
    job = f", running {health.current_job}" if health.current_job else ""
    print(f"{'ready' if health.ready else 'alive'}: {health.model} worker pid {health.pid}{job}")
    return 0


def make_tiny(args: argparse.Namespace) -> int:
    """Write the three tiny checkpoints (or one real-shape one), with ``--safety`` a tiny
    safety classifier too, and print where they are."""
    if args.real_shape:
        from worker.real_shape import make_real_shape_checkpoint, real_shape_configs

        layers = 1 if args.layers is None else args.layers
        try:
            real_shape_configs(layers)
        except ValueError as exc:
            print(f"--layers: {exc}", file=sys.stderr)
            return 2
        name = "real-shape" if layers == 1 else f"real-shape-{layers}-layers"
        # Edit and base workers derive from the same weights: one copy serves all three.
        path = make_real_shape_checkpoint(args.directory / name, layers=layers)
        paths = {model.value: path for model in ModelType}
    else:
        if args.layers is not None:
            print("--layers applies only with --real-shape", file=sys.stderr)
            return 2
        from worker.tiny_models import make_tiny_models

        paths = make_tiny_models(args.directory)
    if args.safety:
        from worker.tiny_safety import make_tiny_safety_classifier

        paths["safety"] = make_tiny_safety_classifier(args.directory / "safety")
    for model, path in paths.items():
        print(f"{model}\t{path}")
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
