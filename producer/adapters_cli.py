"""``zq adapters add|list``: register brand LoRA adapters in the object store."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.adapter_registry import MAX_ADAPTER_BYTES
from common.errors import InvalidJob
from common.job import ModelType
from producer.client import Client


def add_command(commands: Any) -> None:
    """Register ``zq adapters``."""
    adapters = commands.add_parser("adapters", help="register and list LoRA adapters")
    actions = adapters.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="upload a .safetensors LoRA under a name")
    add.add_argument("name")
    add.add_argument("file", type=Path)
    add.add_argument("--model", dest="models", action="append", required=True,
                     choices=[model.value for model in ModelType],
                     help="a model type it is for (repeat for several)")
    add.add_argument("--replace", action="store_true",
                     help="point an existing name at this file (jobs already pinned keep theirs)")
    add.add_argument("--json", action="store_true", help="print JSON")
    add.set_defaults(handler=_add)
    listing = actions.add_parser("list", help="the registered adapters")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_list)


def _add(client: Client, args: argparse.Namespace) -> int:
    data = _read(args.file)
    record = client.adapters.add(args.name, data, [ModelType(m) for m in args.models],
                                 replace=args.replace)
    if args.json:
        print(json.dumps(record.to_json()))
    else:
        models = ",".join(model.value for model in record.models)
        print(f"{record.name}: {record.sha256[:12]} ({record.size} bytes, "
              f"{record.tensors} tensors) for {models}")
    return 0


def _list(client: Client, args: argparse.Namespace) -> int:
    records = client.adapters.records()
    if args.json:
        print(json.dumps([record.to_json() for record in records]))
        return 0
    for record in records:
        when = datetime.fromtimestamp(record.created_at, UTC).strftime("%Y-%m-%d %H:%MZ")
        models = ",".join(model.value for model in record.models)
        print(f"{record.name:<24} {record.sha256[:12]}  {record.size:>11} bytes  "
              f"{models:<16} {when}")
    return 0


def _read(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_ADAPTER_BYTES:
            raise InvalidJob("file", f"at most {MAX_ADAPTER_BYTES} bytes", size)
        return path.read_bytes()
    except OSError as exc:
        raise InvalidJob("file", f"cannot read file: {exc.strerror}", str(path)) from None
    except ValueError:
        raise InvalidJob("file", "cannot read file: not a valid path", str(path)) from None
