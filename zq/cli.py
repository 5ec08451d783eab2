"""The ``zq`` command line. Worker commands import torch only when they run."""

from __future__ import annotations

import argparse
import logging
import sys

from common.errors import ConfigError, InvalidJob, JobConflict, JobNotFound, ZqError

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The full ``zq`` parser."""
    from producer.cli import add_commands as producer_commands
    from producer.webhooks import add_command as webhooks_command
    from worker.cli import add_commands as worker_commands
    from zq.demo import add_command as demo_command
    from zq.exporter import add_command as exporter_command

    parser = argparse.ArgumentParser(prog="zq", description="Z-Image job queue")
    commands = parser.add_subparsers(dest="command", required=True)
    producer_commands(commands)
    worker_commands(commands)
    demo_command(commands)
    exporter_command(commands)
    webhooks_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse and run; bad input exits 2 with a message naming the field and the limit."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.handler.__module__.startswith("producer."):
            from producer.cli import run

            return run(args)
        code: int = args.handler(args)
        return code
    except InvalidJob as exc:
        print(f"invalid job: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (JobNotFound, JobConflict, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ZqError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
