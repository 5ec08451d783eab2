"""Reading a bulk manifest (CSV or JSONL) into rows, each with its line number.

Fields: ``sku``, ``image`` (a local path, a storage key or an http(s) URL),
``prompt`` (the instruction), and optionally ``mask``, ``seed``, ``width``,
``height``, ``model``, ``strength``, ``steps``, ``guidance``, ``negative_prompt``,
``output_format``, ``quality``. Empty cells count as missing, so defaults given on the
command line fill them.

Real shop exports are read as they come: a UTF-8 byte-order mark (Excel), ``;`` or tab
delimiters (detected from the header), CRLF, blank lines, dozens of columns no field uses
(ignored, and reported once as a note), ``30.0`` in whole-number fields and ``0,6``
decimal commas. ``--columns sku=Handle,image=Image Src`` maps fields to differently named
columns. Problems with the file as a whole raise ``InvalidManifest``; a bad row is a
``RowError`` and the other rows still go in.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from common.adapters import parse_adapters
from common.errors import InvalidJob, InvalidManifest

COLUMNS = ("sku", "image", "prompt", "mask", "seed", "width", "height", "model", "strength",
           "steps", "guidance", "negative_prompt", "output_format", "quality", "adapters")
INTEGER_COLUMNS = {"seed", "width", "height", "steps", "quality"}
NUMBER_COLUMNS = {"strength", "guidance"}
DELIMITERS = (",", ";", "\t", "|")
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
_NOTE_NAMES = 12  # unused columns named in the note before "..."


@dataclass(frozen=True)
class ManifestRow:
    """One row as read: its line number and its non-empty cells, typed."""

    line: int
    fields: dict[str, Any]


@dataclass(frozen=True)
class RowError:
    """A row that cannot become a job: its line, its sku (if any), the field and why."""

    line: int
    sku: str
    reason: str
    field: str = "row"


@dataclass(frozen=True)
class ReadOptions:
    """How to read a manifest: field-to-column mapping, delimiter and text encoding."""

    columns: Mapping[str, str] = field(default_factory=dict)
    delimiter: str | None = None  # None: detected from the header line
    encoding: str = "utf-8-sig"

    def describe(self) -> dict[str, Any]:
        """The options that differ from the defaults (part of a batch's identity)."""
        out: dict[str, Any] = {}
        if self.columns:
            out["columns"] = dict(sorted(self.columns.items()))
        if self.delimiter is not None:
            out["delimiter"] = self.delimiter
        if self.encoding != "utf-8-sig":
            out["encoding"] = self.encoding
        return out


@dataclass(frozen=True)
class Manifest:
    """Every row in order (good or not) and notes about the file worth telling once."""

    rows: list[ManifestRow | RowError]
    notes: list[str] = field(default_factory=list)


def parse_columns(specs: Iterable[str]) -> dict[str, str]:
    """``["sku=Handle,image=Image Src"]`` -> ``{"sku": "Handle", "image": "Image Src"}``.

    Raises ``InvalidManifest`` naming ``--columns`` and the offending part.
    """
    mapping: dict[str, str] = {}
    for spec in specs:
        for part in spec.split(","):
            if not part.strip():
                continue
            name, sep, column = part.partition("=")
            name, column = name.strip(), column.strip()
            if not sep or not name or not column:
                raise InvalidManifest(f"--columns: expected FIELD=COLUMN, got {part.strip()!r}")
            if name not in COLUMNS:
                raise InvalidManifest(f"--columns: unknown field {name!r}; "
                                      f"fields: {', '.join(COLUMNS)}")
            if name in mapping and mapping[name] != column:
                raise InvalidManifest(f"--columns: {name} is mapped twice "
                                      f"({mapping[name]!r} and {column!r})")
            mapping[name] = column
    return mapping


def read_manifest(path: Path, options: ReadOptions | None = None,
                  required: Iterable[str] = ("sku",)) -> Manifest:
    """Rows of a ``.csv`` (with a header) or ``.jsonl`` manifest, in order.

    ``required`` fields must have a column (CSV); a row that leaves ``sku`` empty is
    a ``RowError``. Raises ``InvalidManifest`` for a problem with the whole file.
    """
    options = options or ReadOptions()
    if options.delimiter is not None and len(options.delimiter) != 1:
        raise InvalidManifest(f"--delimiter: one character, got {options.delimiter!r}")
    text = _decode(path, _read_bytes(path), options.encoding)
    if path.suffix.lower() in JSONL_SUFFIXES:
        return _jsonl(path, text, options.columns)
    return _csv(path, text, options, tuple(required))


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidManifest(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError:  # a NUL in the path
        raise InvalidManifest(f"{path!r}: not a valid path") from None


def _decode(path: Path, data: bytes, encoding: str) -> str:
    try:
        text = data.decode(encoding)
    except LookupError:
        raise InvalidManifest(f"--encoding: unknown encoding {encoding!r}") from None
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        byte = data[exc.start:exc.start + 1].hex()
        hint = ("save it as 'CSV UTF-8' or pass --encoding cp1252 (Windows Excel) "
                "or --encoding latin-1" if encoding.replace("_", "-").lower().startswith("utf")
                else "pass the file's --encoding")
        shown = "UTF-8" if encoding.lower() in {"utf-8-sig", "utf_8_sig"} else encoding
        raise InvalidManifest(f"{path.name}: line {line}: byte 0x{byte} is not {shown} "
                              f"text; {hint}") from None
    return text.removeprefix("\ufeff")


# -- CSV ---------------------------------------------------------------------------------


def _csv(path: Path, text: str, options: ReadOptions, required: tuple[str, ...]) -> Manifest:
    delimiter = options.delimiter or _detect_delimiter(text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header, header_line = _header(reader)
    if header is None:
        raise InvalidManifest(f"{path.name}: no header line (empty file)")
    index, notes = _column_index(path, header, options.columns, required)
    rows: list[ManifestRow | RowError] = []
    for line, cells in _records(reader, header_line):
        if isinstance(cells, RowError):
            rows.append(cells)
            continue
        if not any(cell.strip() for cell in cells):
            continue  # Excel leaves ",,,," lines behind
        values = {name: cells[i].strip() for name, i in index.items() if i < len(cells)}
        values = {name: value for name, value in values.items() if value}
        extra = [cell for cell in cells[len(header):] if cell.strip()]
        if extra:
            rows.append(RowError(line, values.get("sku", ""),
                                 f"row: {len(cells)} cells but the header has {len(header)} "
                                 "(an unquoted delimiter in a cell?)"))
            continue
        rows.append(_typed(line, values))
    return Manifest(rows, notes)


def _detect_delimiter(text: str) -> str:
    """The candidate that splits the header line most; a comma when none does."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    counts = {d: _unquoted_count(first, d) for d in DELIMITERS}
    best = max(DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _unquoted_count(line: str, char: str) -> int:
    count, quoted = 0, False
    for c in line:
        if c == '"':
            quoted = not quoted
        elif c == char and not quoted:
            count += 1
    return count


def _header(reader: Iterator[list[str]]) -> tuple[list[str] | None, int]:
    for cells in reader:
        if any(cell.strip() for cell in cells):
            return [cell.strip() for cell in cells], getattr(reader, "line_num", 1)
    return None, 0


def _records(reader: Iterator[list[str]],
             header_line: int) -> Iterator[tuple[int, list[str] | RowError]]:
    """(line, cells) per record; a record the csv module refuses is a ``RowError``."""
    line = header_line
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            line = getattr(reader, "line_num", line + 1)
            yield line, RowError(line, "", f"row: not readable as CSV: {exc}")
            continue
        line = getattr(reader, "line_num", line + 1)
        yield line, cells


def _normal(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def _column_index(path: Path, header: list[str], mapping: Mapping[str, str],
                  required: tuple[str, ...]) -> tuple[dict[str, int], list[str]]:
    """Which column each field reads, and a note naming the columns nothing reads."""
    index: dict[str, int] = {}
    for name in COLUMNS:
        wanted = mapping.get(name)
        if wanted is not None:
            found = [i for i, col in enumerate(header) if col == wanted.strip()] or [
                i for i, col in enumerate(header) if col.lower() == wanted.strip().lower()]
            if not found:
                raise InvalidManifest(f"--columns: {name}={wanted!r}: {path.name} has no such "
                                      f"column; its columns: {_names(header)}")
        else:
            found = [i for i, col in enumerate(header) if _normal(col) == name]
            found = [i for i in found if header[i] not in mapping.values()]
        if len(found) > 1:
            raise InvalidManifest(f"{path.name}: column {header[found[0]]!r} appears "
                                  f"{len(found)} times; name one with --columns {name}=COLUMN")
        if found:
            index[name] = found[0]
    for name in required:
        if name not in index:
            raise InvalidManifest(f"{path.name}: no {name!r} column (its columns: "
                                  f"{_names(header)}); map one with --columns {name}=COLUMN")
    used = set(index.values())
    unused = [col for i, col in enumerate(header) if i not in used and col]
    notes = []
    if unused:
        notes.append(f"ignoring {len(unused)} column{'s' if len(unused) > 1 else ''} no field "
                     f"uses: {_names(unused)} (map one with --columns FIELD=COLUMN)")
    return index, notes


def _names(columns: list[str]) -> str:
    shown = ", ".join(repr(c) for c in columns[:_NOTE_NAMES])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > _NOTE_NAMES else "")


# -- JSONL -------------------------------------------------------------------------------


def _jsonl(path: Path, text: str, mapping: Mapping[str, str]) -> Manifest:
    rename = {column: name for name, column in mapping.items()}
    rows: list[ManifestRow | RowError] = []
    unused: set[str] = set()
    seen: set[str] = set()
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            cells = json.loads(raw)
        except json.JSONDecodeError as exc:
            rows.append(RowError(line, "", f"row: not valid JSON: {exc.msg}"))
            continue
        if not isinstance(cells, dict):
            rows.append(RowError(line, "", "row: must be a JSON object"))
            continue
        seen.update(cells)
        values: dict[str, Any] = {}
        for key, value in cells.items():
            name = rename.get(key, key if key not in mapping else None)
            if name is None or name not in COLUMNS:
                unused.add(key)
            elif value not in (None, ""):
                values[name] = value
        rows.append(_typed(line, values))
    missing = sorted(column for column in mapping.values() if column not in seen)
    if missing and rows:
        raise InvalidManifest(f"--columns: no row of {path.name} has the key {missing[0]!r}")
    notes = [f"ignoring keys no field uses: {_names(sorted(unused))}"] if unused else []
    return Manifest(rows, notes)


# -- typing cells ------------------------------------------------------------------------


def _typed(line: int, cells: dict[str, Any]) -> ManifestRow | RowError:
    raw_sku = cells.get("sku", "")
    sku = str(raw_sku) if isinstance(raw_sku, str | int) else ""
    typed: dict[str, Any] = {}
    for name, value in cells.items():
        try:
            if name in INTEGER_COLUMNS:
                typed[name] = _integer(value)
            elif name in NUMBER_COLUMNS:
                typed[name] = _number(value)
            elif name == "adapters":  # "acme:0.8;globex" in a cell, a list in JSONL
                typed[name] = [adapter.to_dict() for adapter in parse_adapters(value)]
            else:
                typed[name] = _text(value)
        except InvalidJob as exc:
            return RowError(line, sku, str(exc), exc.field)
        except ValueError as exc:
            return RowError(line, sku, f"{name}: {exc}", name)
    if not typed.get("sku"):
        return RowError(line, "", "sku: missing", "sku")
    return ManifestRow(line, typed)


def _text(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"must be text, got {type(value).__name__}")
    return str(value)


def _integer(value: object) -> int:
    """An int, also from ``"30"``, ``"30.0"`` or ``"30,0"`` (what spreadsheets write)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = _decimal(value)
    if number != number.to_integral_value():
        raise ValueError(f"must be a whole number, got {value!r}")
    return int(number)


def _number(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float(_decimal(value))


def _decimal(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"not a number: {value!r}")
    text = str(value).strip()
    if "," in text and "." not in text and text.count(",") == 1:
        text = text.replace(",", ".")  # a decimal comma (Excel in much of Europe)
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a number: {value!r}")
    return number
