"""The ``zq`` command line. Worker commands import torch only when they run."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

import redis

from common.errors import (
    ConfigError,
    InvalidJob,
    InvalidManifest,
    JobConflict,
    JobNotFound,
    ObjectNotFound,
    StorageError,
    TransientError,
    ZqError,
)

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED, EXIT_INTERNAL = 1, 2, 3, 130, 70


class _Parser(argparse.ArgumentParser):
    """argparse with its complaint on one line (the message names the option)."""

    def error(self, message: str) -> NoReturn:
        """Exit 2 with ``PROG: error: MESSAGE``, not the usage block."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full ``zq`` parser."""
    from producer.api.cli import add_command as api_command
    from producer.cli import add_commands as producer_commands
    from producer.webhooks import add_command as webhooks_command
    from worker.cli import add_commands as worker_commands
    from zq.dead_letters import add_command as dead_letters_command
    from zq.demo import add_command as demo_command
    from zq.exporter import add_command as exporter_command

    parser = _Parser(prog="zq", description="Z-Image job queue")
    commands = parser.add_subparsers(dest="command", required=True)
    producer_commands(commands)
    worker_commands(commands)
    demo_command(commands)
    exporter_command(commands)
    dead_letters_command(commands)
    webhooks_command(commands)
    api_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse and run; every error is one line on stderr and an exit code, never a traceback.

    2: bad input or settings (the message names the field); 3: Redis or the object store
    cannot be reached (run the same command again later); 1: a job failed; 130:
    interrupted; 70: a bug (``ZQ_DEBUG=1`` shows the traceback).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.handler.__module__.startswith("producer."):
            from producer.cli import run

            return run(args)
        code: int = args.handler(args)
        return code
    except InvalidJob as exc:
        return _fail(f"invalid job: {exc}", EXIT_USAGE)
    except InvalidManifest as exc:
        return _fail(f"invalid manifest: {exc}", EXIT_USAGE)
    except (JobNotFound, JobConflict, ConfigError, ObjectNotFound) as exc:
        return _fail(f"error: {exc}", EXIT_USAGE)
    except (TransientError, StorageError) as exc:
        return _fail(f"error: {exc}", EXIT_UNAVAILABLE)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        sharded = os.environ.get("ZQ_REDIS_SHARDS", "").strip()
        where = "ZQ_REDIS_SHARDS" if sharded else "ZQ_REDIS_URL"
        return _fail(f"error: cannot reach Redis ({where}): {exc}", EXIT_UNAVAILABLE)
    except ZqError as exc:
        return _fail(f"error: {exc}", EXIT_FAILED)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Exception as exc:
        if os.environ.get("ZQ_DEBUG"):
            raise
        return _fail(f"error: unexpected {type(exc).__name__}: {exc} "
                     "(ZQ_DEBUG=1 shows the traceback)", EXIT_INTERNAL)


def _fail(message: str, code: int) -> int:
    print(" ".join(message.split()), file=sys.stderr)
    return code
