"""Reading a bulk manifest (CSV or JSONL) into rows, each with its line number.

Columns: ``sku``, ``image`` (a local path, a storage key or an http(s) URL),
``prompt`` (the instruction), and optionally ``mask``, ``seed``, ``width``,
``height``, ``model``, ``strength``, ``steps``, ``guidance``, ``negative_prompt``,
``output_format``. Empty cells count as missing, so defaults given on the command
line fill them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COLUMNS = ("sku", "image", "prompt", "mask", "seed", "width", "height", "model", "strength",
           "steps", "guidance", "negative_prompt", "output_format", "quality")
INTEGER_COLUMNS = {"seed", "width", "height", "steps", "quality"}
NUMBER_COLUMNS = {"strength", "guidance"}


@dataclass(frozen=True)
class ManifestRow:
    """One row as read: its line number and its non-empty cells, typed."""

    line: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class RowError:
    """A row that cannot become a job, and why."""

    line: int
    sku: str
    reason: str


def read_manifest(path: Path) -> Iterator[ManifestRow | RowError]:
    """Rows of a ``.csv`` (with a header) or ``.jsonl`` manifest, in order."""
    if path.suffix.lower() in {".jsonl", ".ndjson", ".json"}:
        yield from _jsonl(path)
    else:
        yield from _csv(path)


def _csv(path: Path) -> Iterator[ManifestRow | RowError]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        unknown = sorted(set(reader.fieldnames or []) - set(COLUMNS))
        if unknown:
            raise ValueError(f"{path}: unknown column {unknown[0]!r}; known: {', '.join(COLUMNS)}")
        for cells in reader:
            line = reader.line_num
            yield _typed(line, {k: v for k, v in cells.items() if k and v not in (None, "")})


def _jsonl(path: Path) -> Iterator[ManifestRow | RowError]:
    with path.open(encoding="utf-8") as handle:
        for line, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                cells = json.loads(text)
            except json.JSONDecodeError as exc:
                yield RowError(line, "", f"not valid JSON: {exc.msg}")
                continue
            if not isinstance(cells, dict):
                yield RowError(line, "", "a row must be a JSON object")
                continue
            unknown = sorted(set(cells) - set(COLUMNS))
            if unknown:
                yield RowError(line, str(cells.get("sku", "")), f"unknown field {unknown[0]!r}")
                continue
            yield _typed(line, {k: v for k, v in cells.items() if v not in (None, "")})


def _typed(line: int, cells: dict[str, Any]) -> ManifestRow | RowError:
    sku = str(cells.get("sku", ""))
    typed: dict[str, Any] = {}
    for name, value in cells.items():
        try:
            if name in INTEGER_COLUMNS:
                typed[name] = int(value)
            elif name in NUMBER_COLUMNS:
                typed[name] = float(value)
            else:
                typed[name] = str(value)
        except (TypeError, ValueError):
            return RowError(line, sku, f"{name}: not a number: {value!r}")
    if not typed.get("sku"):
        return RowError(line, sku, "sku: missing")
    return ManifestRow(line, typed)
