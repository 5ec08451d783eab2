"""The LoRA adapters a worker keeps loaded: fetched by checksum, applied per job.

A job names adapters pinned to file checksums (``common.adapters``). Before each job the
worker makes exactly that set active, at the job's weights, through diffusers' own LoRA
API on the shared transformer (``load_lora_weights``, ``set_adapters``; peft underneath),
and a job that names none runs with LoRA disabled: the base weights are never merged or
changed, so no brand's style reaches the next job. Loaded adapters stay resident, least
recently used first out, within a byte budget (the files' sizes: what the LoRA layers hold).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.adapter_registry import MAX_ADAPTER_BYTES, file_key
from common.adapters import Adapter
from common.errors import AdapterFailed, ObjectNotFound, StorageError
from common.storage import ObjectStore

log = logging.getLogger(__name__)


@dataclass
class AdapterStats:
    """What the adapter set did, for metrics: loads (misses), hits and evictions."""

    loads: int = 0
    hits: int = 0
    evictions: int = 0
    load_seconds: float = 0.0


def peft_name(adapter: Adapter) -> str:
    """The name an adapter file is loaded under: its checksum, so a name that was
    re-registered to another file is another adapter."""
    return f"a{adapter.sha256}"


class AdapterSet:
    """The adapters loaded into one pipeline's transformer (shared by its derived
    img2img and inpaint pipelines), and which of them the current job uses."""

    def __init__(self, pipeline: Any, store: ObjectStore, cache_dir: Path,
                 budget_bytes: int) -> None:
        self.pipeline = pipeline
        self.store = store
        self.cache_dir = Path(cache_dir)
        self.budget_bytes = budget_bytes
        self.resident: OrderedDict[str, int] = OrderedDict()  # peft name -> bytes
        self.stats = AdapterStats()
        self._enabled = False

    @property
    def resident_bytes(self) -> int:
        """Bytes of the adapters loaded now."""
        return sum(self.resident.values())

    def apply(self, adapters: tuple[Adapter, ...]) -> None:
        """Make exactly ``adapters`` active at their weights (none: LoRA off).

        Raises ``AdapterFailed`` for a file that cannot be fetched or loaded; LoRA is then
        left off, so the next job starts clean.
        """
        if not adapters:
            self._disable()
            return
        try:
            names = [self._ensure(adapter, keep={peft_name(a) for a in adapters})
                     for adapter in adapters]
            self.pipeline.enable_lora()
            self.pipeline.set_adapters(names, [adapter.weight for adapter in adapters])
            self._enabled = True
        except (AdapterFailed, StorageError):  # storage trouble is retried like any other
            self._disable()
            raise
        except Exception as exc:  # peft/diffusers refusing the file: this job's problem
            self._disable()
            raise AdapterFailed(f"cannot apply adapters {[a.name for a in adapters]}: "
                                f"{type(exc).__name__}: {exc}") from exc

    def _disable(self) -> None:
        if self._enabled:
            self.pipeline.disable_lora()
            self._enabled = False

    def _ensure(self, adapter: Adapter, keep: set[str]) -> str:
        name = peft_name(adapter)
        if adapter.sha256 is None:
            raise AdapterFailed(f"adapter {adapter.name} was not pinned to a file at submit")
        if name in self.resident:
            self.resident.move_to_end(name)
            self.stats.hits += 1
            return name
        path = self._fetch(adapter)
        started = time.perf_counter()
        try:
            self.pipeline.load_lora_weights(str(path), adapter_name=name)
        except Exception as exc:
            with contextlib.suppress(Exception):  # whatever the failed load left behind
                self.pipeline.delete_adapters([name])
            raise AdapterFailed(f"adapter {adapter.name} ({adapter.sha256[:12]}) does not fit "
                                f"this model: {type(exc).__name__}: {exc}") from exc
        self.stats.load_seconds += time.perf_counter() - started
        self.stats.loads += 1
        self.resident[name] = path.stat().st_size
        log.info("adapter %s (%s) loaded", adapter.name, adapter.sha256[:12])
        self._evict(keep)
        return name

    def _fetch(self, adapter: Adapter) -> Path:
        """The adapter's file on local disk, checked against its checksum."""
        sha256 = str(adapter.sha256)
        path = self.cache_dir / f"{sha256}.safetensors"
        if path.is_file():
            return path
        try:
            data = self.store.get(file_key(sha256), max_bytes=MAX_ADAPTER_BYTES)
        except ObjectNotFound:
            raise AdapterFailed(f"adapter {adapter.name}: no file {sha256[:12]} in storage "
                                "(was it registered with zq adapters add?)") from None
        if hashlib.sha256(data).hexdigest() != sha256:
            raise AdapterFailed(f"adapter {adapter.name}: the stored file does not match its "
                                f"checksum {sha256[:12]}")
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        part = path.with_suffix(".part")
        part.write_bytes(data)
        part.replace(path)
        return path

    def _evict(self, keep: set[str]) -> None:
        """Unload least recently used adapters, never those of the current job."""
        for name in list(self.resident):
            if self.resident_bytes <= self.budget_bytes:
                return
            if name in keep:
                continue
            self.pipeline.delete_adapters([name])
            del self.resident[name]
            (self.cache_dir / f"{name[1:]}.safetensors").unlink(missing_ok=True)
            self.stats.evictions += 1
