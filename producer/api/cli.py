"""``zq api``: serve the HTTP API with uvicorn (one stateless process; run any number)."""

from __future__ import annotations

import argparse
from typing import Any

from common.errors import ConfigError
from producer.api.auth import KEYS_ENV, KEYS_FILE_ENV, ApiKeys, is_loopback
from producer.client import Client
from zq.exporter import port_number


def add_command(commands: Any) -> None:
    """Register ``zq api``."""
    command = commands.add_parser("api", help="serve the HTTP API (REST, SSE, OpenAPI at /docs)")
    command.add_argument("--host", default="127.0.0.1",
                         help="address to bind (default 127.0.0.1; others need API keys)")
    command.add_argument("--port", type=port_number, default=8000, help="default 8000")
    command.set_defaults(handler=run_api)


def run_api(client: Client, args: argparse.Namespace) -> int:
    """Serve until stopped; refuses a non-loopback address when no API key is configured."""
    try:
        import uvicorn

        from producer.api.app import create_app
    except ImportError as exc:  # a light install without the extra
        raise ConfigError(f"zq api needs the api extra (pip install 'zimage-queue[api]'): "
                          f"{exc}") from None
    keys = ApiKeys.from_env()
    if not keys.enabled and not is_loopback(args.host):
        raise ConfigError(f"{KEYS_FILE_ENV}: no API keys configured ({KEYS_FILE_ENV} or "
                          f"{KEYS_ENV}), so zq api binds only a loopback address, not "
                          f"{args.host!r}")
    app = create_app(client.settings, client, keys)
    print(f"zq api on http://{args.host}:{args.port} (conversation page at /, docs at /docs, "
          f"auth {'on' if keys.enabled else 'off'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0
