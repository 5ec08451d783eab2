"""The registry of LoRA adapters, kept in the object store beside the images.

``zq adapters add NAME FILE --model base`` checks that the file is a ``.safetensors`` LoRA,
stores it under its checksum (``adapters/files/<sha256>.safetensors``, never overwritten:
a replay can always fetch the file a job used) and then writes the name's record
(``adapters/<name>.json``: checksum, size, the model types it is for). The record is
written last, so a name never points at a file that is not there.

At submit the client pins each adapter a job names to the checksum its name means now
(``AdapterRegistry.pin``), refusing an unknown name or one registered for another model
type with ``InvalidJob("adapters", ...)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from common.adapters import ADAPTER_NAME, NAME_RULE, SHA256, Adapter
from common.errors import InvalidJob, ObjectNotFound
from common.job import JobSpec, ModelType
from common.storage import ObjectStore

RECORDS = "adapters/"
MAX_ADAPTER_BYTES = 2 * 1024**3
MAX_HEADER_BYTES = 100 * 1024 * 1024
# How long a client trusts a record it read: a replaced adapter reaches new jobs this late.
RECORD_CACHE_S = 30.0


def record_key(name: str) -> str:
    """Where the record of the adapter called ``name`` lives."""
    return f"{RECORDS}{name}.json"


def file_key(sha256: str) -> str:
    """Where the adapter file with that checksum lives (content-addressed, immutable)."""
    return f"{RECORDS}files/{sha256}.safetensors"


@dataclass(frozen=True)
class AdapterRecord:
    """What a registered name means: one file, for some model types."""

    name: str
    sha256: str
    size: int
    models: tuple[ModelType, ...]
    tensors: int
    created_at: float

    @property
    def key(self) -> str:
        """The storage key of the file."""
        return file_key(self.sha256)

    def to_json(self) -> dict[str, Any]:
        """The record as stored (and as ``zq adapters list --json`` prints it)."""
        data = dataclasses.asdict(self)
        data["models"] = [model.value for model in self.models]
        data["key"] = self.key
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterRecord:
        """Decode a stored record."""
        return cls(name=str(data["name"]), sha256=str(data["sha256"]), size=int(data["size"]),
                   models=tuple(ModelType(m) for m in data["models"]),
                   tensors=int(data["tensors"]), created_at=float(data["created_at"]))


def inspect_lora(data: bytes) -> int:
    """Check that ``data`` is a ``.safetensors`` file of LoRA weights; its tensor count.

    Reads only the header (``safetensors``' format: an 8-byte length, then JSON naming
    each tensor's dtype, shape and byte range), so no ML library is needed here.
    """
    rule = "a .safetensors file of LoRA weights"
    if len(data) > MAX_ADAPTER_BYTES:
        raise InvalidJob("file", f"at most {MAX_ADAPTER_BYTES} bytes", len(data))
    if len(data) < 8:
        raise InvalidJob("file", rule, f"{len(data)} bytes")
    length = int.from_bytes(data[:8], "little")
    if not 2 <= length <= min(MAX_HEADER_BYTES, len(data) - 8):
        raise InvalidJob("file", f"{rule} (no safetensors header)", f"header of {length} bytes")
    try:
        header = json.loads(data[8:8 + length])
    except (UnicodeDecodeError, ValueError):
        raise InvalidJob("file", f"{rule} (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise InvalidJob("file", f"{rule} (its header is not a table of tensors)")
    tensors = {name: info for name, info in header.items() if name != "__metadata__"}
    body = len(data) - 8 - length
    for name, info in tensors.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= body):
            raise InvalidJob("file", f"{rule} (tensor {name!r} lies outside the file)")
    if not any("lora" in name.lower() for name in tensors):
        raise InvalidJob("file", f"{rule}: no tensor is a LoRA weight (lora_A/lora_B, "
                                 "lora_down/lora_up)", f"{len(tensors)} tensors")
    return len(tensors)


class AdapterRegistry:
    """Registers adapters and answers what a name means; records cached ``cache_s``."""

    def __init__(self, store: ObjectStore, cache_s: float = RECORD_CACHE_S) -> None:
        self.store = store
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, AdapterRecord]] = {}
        self._lock = threading.Lock()

    def add(self, name: str, data: bytes, models: list[ModelType],
            replace: bool = False) -> AdapterRecord:
        """Check, store and record an adapter; ``InvalidJob`` naming the field otherwise.

        A name already registered to another file is refused unless ``replace``; the
        same file again is a no-op (it returns the existing record).
        """
        if not isinstance(name, str) or not ADAPTER_NAME.fullmatch(name):
            raise InvalidJob("name", NAME_RULE, name)
        if not models:
            raise InvalidJob("model", "at least one model type: turbo, edit or base")
        tensors = inspect_lora(data)
        sha256 = hashlib.sha256(data).hexdigest()
        existing = self._read(name)
        if existing is not None and existing.sha256 == sha256 and set(existing.models) == set(
                models):
            return existing
        if existing is not None and existing.sha256 != sha256 and not replace:
            raise InvalidJob("name", "already registered to another file (--replace to "
                                     "point it at this one)", name)
        record = AdapterRecord(name, sha256, len(data), tuple(dict.fromkeys(models)), tensors,
                               time.time())
        if not self.store.exists(record.key):
            self.store.put(record.key, data, "application/octet-stream")
        self.store.put(record_key(name), json.dumps(record.to_json(), indent=2).encode(),
                       "application/json")
        with self._lock:
            self._cache[name] = (time.monotonic(), record)
        return record

    def get(self, name: str) -> AdapterRecord:
        """The record of ``name``; ``InvalidJob("adapters", ...)`` if none is registered."""
        with self._lock:
            cached = self._cache.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.cache_s:
            return cached[1]
        record = self._read(name)
        if record is None:
            raise InvalidJob("adapters", "a registered adapter (zq adapters list)", name)
        with self._lock:
            self._cache[name] = (time.monotonic(), record)
        return record

    def records(self) -> list[AdapterRecord]:
        """Every registered adapter, by name."""
        names = [key[len(RECORDS):-len(".json")] for key in self.store.keys(RECORDS)
                 if key.endswith(".json") and "/" not in key[len(RECORDS):]]
        return [record for name in names if (record := self._read(name)) is not None]

    def pin(self, spec: JobSpec) -> JobSpec:
        """``spec`` with each adapter pinned to its file's checksum, after checking that
        the adapter is registered, for the job's model type, and its file is stored.

        An adapter already pinned (a replay) keeps its checksum if that file is stored.
        """
        if not spec.adapters:
            return spec
        pinned = []
        for adapter in spec.adapters:
            if adapter.sha256 is not None:
                if not self.store.exists(file_key(adapter.sha256)):
                    raise InvalidJob("adapters", "a stored adapter file", adapter.sha256)
                pinned.append(adapter)
                continue
            record = self.get(adapter.name)
            if spec.model not in record.models:
                allowed = ", ".join(model.value for model in record.models)
                raise InvalidJob("adapters", f"adapter {adapter.name} is for {allowed}, "
                                             f"not {spec.model.value}", adapter.name)
            pinned.append(Adapter(adapter.name, adapter.weight, record.sha256))
        return dataclasses.replace(spec, adapters=tuple(pinned))

    def _read(self, name: str) -> AdapterRecord | None:
        try:
            raw = self.store.get(record_key(name), max_bytes=64 * 1024)
        except ObjectNotFound:
            return None
        try:
            record = AdapterRecord.from_json(json.loads(raw))
        except (ValueError, KeyError, TypeError):
            raise InvalidJob("adapters", "a readable adapter record", record_key(name)) from None
        if record.name != name or not SHA256.fullmatch(record.sha256):
            raise InvalidJob("adapters", "a readable adapter record", record_key(name))
        return record
