"""LoRA adapters a job names: ``{name, weight}`` pairs, parsed and checked at the door.

A brand trains a small LoRA adapter so every image "looks like us"; a job names the
registered adapters it wants (``common.adapter_registry``) and the weight of each. The
client pins each name to the checksum of the file registered under it when the job is
submitted (``sha256``), so the worker renders, and a replay reproduces, exactly that file.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidJob

MAX_ADAPTERS = 4
MIN_ADAPTER_WEIGHT, MAX_ADAPTER_WEIGHT = -2.0, 2.0
# No dots: the name becomes a PEFT adapter name, which lives in module attribute paths.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$")
NAME_RULE = "1-64 characters of letters, digits, '_', '-' (starting with a letter or digit)"
SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FIELD = "adapters"


@dataclass(frozen=True)
class Adapter:
    """One adapter of a job: a registered name, its weight, and (once submitted) the
    checksum of the file the name meant then."""

    name: str
    weight: float = 1.0
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{name, weight[, sha256]}``, as stored in the job's spec."""
        data: dict[str, Any] = {"name": self.name, "weight": self.weight}
        if self.sha256 is not None:
            data["sha256"] = self.sha256
        return data


def parse_adapters(value: object) -> tuple[Adapter, ...]:
    """Adapters as a producer may give them; raises ``InvalidJob("adapters", ...)``.

    Accepted: nothing (``None``, ``[]``, ``""``); a list of ``Adapter``, of
    ``{"name": ..., "weight": ...}`` mappings, or of ``"name"`` / ``"name:weight"``
    strings; or one string of those separated by commas, semicolons or spaces (a
    manifest cell, a CLI option).
    """
    if value is None:
        return ()
    if isinstance(value, str):
        value = [part for part in re.split(r"[,;\s]+", value) if part]
    if not isinstance(value, list | tuple):
        raise InvalidJob(_FIELD, "a list of {name, weight} adapters", value)
    adapters = tuple(_one(item) for item in value)
    check_adapters(adapters)
    return adapters


def _one(item: object) -> Adapter:
    if isinstance(item, Adapter):
        return item
    if isinstance(item, str):
        name, sep, weight = item.partition(":")
        return Adapter(name, _weight(weight) if sep else 1.0)
    if isinstance(item, dict):
        unknown = sorted(set(map(str, item)) - {"name", "weight", "sha256"})
        if unknown:
            raise InvalidJob(_FIELD, f"an adapter has name, weight and sha256; not {unknown[0]}",
                             item)
        given = item.get("name")
        if not isinstance(given, str):
            raise InvalidJob(_FIELD, f"each adapter needs a name: {NAME_RULE}", item)
        sha256 = item.get("sha256")
        if sha256 is not None and (not isinstance(sha256, str) or not SHA256.fullmatch(sha256)):
            raise InvalidJob(_FIELD, "sha256 is 64 lower-case hex digits", sha256)
        return Adapter(given, _weight(item.get("weight", 1.0)), sha256)
    raise InvalidJob(_FIELD, "each adapter is a {name, weight} mapping or 'name:weight'", item)


def _weight(value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise InvalidJob(_FIELD, "an adapter weight is a number", value) from None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidJob(_FIELD, "an adapter weight is a number", value)
    return float(value)


def check_adapters(adapters: Iterable[object]) -> None:
    """Count, names, weights and duplicates; raises ``InvalidJob("adapters", ...)``."""
    if not isinstance(adapters, tuple):
        raise InvalidJob(_FIELD, "a tuple of Adapter (build specs with new_job)", adapters)
    if len(adapters) > MAX_ADAPTERS:
        raise InvalidJob(_FIELD, f"at most {MAX_ADAPTERS} adapters per job", len(adapters))
    seen: set[str] = set()
    for adapter in adapters:
        if not isinstance(adapter, Adapter):
            raise InvalidJob(_FIELD, "a tuple of Adapter (build specs with new_job)", adapter)
        if not isinstance(adapter.name, str) or not ADAPTER_NAME.fullmatch(adapter.name):
            raise InvalidJob(_FIELD, f"an adapter name is {NAME_RULE}", adapter.name)
        if adapter.name in seen:
            raise InvalidJob(_FIELD, "each adapter at most once", adapter.name)
        seen.add(adapter.name)
        weight = adapter.weight
        if (not isinstance(weight, int | float) or isinstance(weight, bool)
                or not math.isfinite(weight)
                or not MIN_ADAPTER_WEIGHT <= weight <= MAX_ADAPTER_WEIGHT):
            raise InvalidJob(_FIELD, f"an adapter weight is between {MIN_ADAPTER_WEIGHT} and "
                                     f"{MAX_ADAPTER_WEIGHT}", weight)
        if adapter.sha256 is not None and not SHA256.fullmatch(str(adapter.sha256)):
            raise InvalidJob(_FIELD, "sha256 is 64 lower-case hex digits", adapter.sha256)
