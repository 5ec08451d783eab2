"""The worker's adapter set on a fake pipeline: what is loaded, active, evicted, refused."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from common.adapter_registry import file_key
from common.adapters import Adapter
from common.errors import AdapterFailed, StorageError
from common.storage import LocalStore
from worker.adapters import AdapterSet, peft_name


class FakePipeline:
    """Records the LoRA calls diffusers' loader mixin would receive."""

    def __init__(self, refuse: set[str] | None = None) -> None:
        self.loaded: list[str] = []
        self.active: tuple[list[str], list[float]] | None = None
        self.enabled = False
        self.refuse = refuse or set()
        self.calls: list[str] = []

    def load_lora_weights(self, path: str, adapter_name: str) -> None:
        self.calls.append(f"load {adapter_name}")
        if adapter_name in self.refuse:
            raise ValueError("target modules not found in the base model")
        self.loaded.append(adapter_name)

    def set_adapters(self, names: list[str], weights: list[float]) -> None:
        assert all(name in self.loaded for name in names)
        self.active = (names, weights)

    def enable_lora(self) -> None:
        self.enabled = True

    def disable_lora(self) -> None:
        self.calls.append("disable")
        self.enabled = False

    def delete_adapters(self, names: list[str]) -> None:
        self.calls.append(f"delete {names[0]}")
        for name in names:
            self.loaded.remove(name)


def stored(store: LocalStore, content: bytes, name: str = "brand") -> Adapter:
    sha256 = hashlib.sha256(content).hexdigest()
    store.put(file_key(sha256), content, "application/octet-stream")
    return Adapter(name, 1.0, sha256)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


def make_set(store: LocalStore, tmp_path: Path, budget: int = 10_000,
             pipeline: Any = None) -> tuple[AdapterSet, FakePipeline]:
    pipe = pipeline or FakePipeline()
    return AdapterSet(pipe, store, tmp_path / "cache", budget), pipe


def test_a_job_gets_exactly_its_adapters_and_a_plain_job_gets_lora_off(
        store: LocalStore, tmp_path: Path) -> None:
    adapters, pipe = make_set(store, tmp_path)
    acme, globex = stored(store, b"a" * 100, "acme"), stored(store, b"g" * 100, "globex")
    adapters.apply((Adapter("acme", 0.5, acme.sha256), Adapter("globex", -1.0, globex.sha256)))
    assert pipe.enabled and pipe.active == ([peft_name(acme), peft_name(globex)], [0.5, -1.0])
    adapters.apply(())
    assert not pipe.enabled
    adapters.apply((acme,))
    assert pipe.enabled and pipe.active == ([peft_name(acme)], [1.0])
    assert (adapters.stats.loads, adapters.stats.hits) == (2, 1)


def test_least_recently_used_adapters_leave_past_the_budget_never_the_jobs_own(
        store: LocalStore, tmp_path: Path) -> None:
    adapters, pipe = make_set(store, tmp_path, budget=250)
    a, b, c = (stored(store, bytes([n]) * 100, f"n{n}") for n in range(3))
    adapters.apply((a,))
    adapters.apply((b,))
    adapters.apply((a,))  # a is now the most recent
    adapters.apply((c,))  # 300 bytes: b goes
    assert pipe.loaded == [peft_name(a), peft_name(c)]
    assert adapters.stats.evictions == 1 and adapters.resident_bytes == 200
    assert not (tmp_path / "cache" / f"{b.sha256}.safetensors").exists()
    # A job may need more than the budget: its own adapters stay for it.
    tight, tight_pipe = make_set(store, tmp_path, budget=50)
    tight.apply((a, b))
    assert tight_pipe.active is not None and len(tight_pipe.active[0]) == 2


def test_a_missing_corrupt_or_unfit_file_fails_the_job_and_leaves_lora_off(
        store: LocalStore, tmp_path: Path) -> None:
    good = stored(store, b"a" * 10)
    refused = stored(store, b"x" * 10, "refused")
    pipe = FakePipeline(refuse={peft_name(refused)})
    adapters, _ = make_set(store, tmp_path, pipeline=pipe)
    adapters.apply((good,))
    with pytest.raises(AdapterFailed, match="no file"):
        adapters.apply((Adapter("gone", 1.0, "c" * 64),))
    assert not pipe.enabled
    tampered = stored(store, b"t" * 10, "tampered")
    store.put(file_key(str(tampered.sha256)), b"something else", "application/octet-stream")
    with pytest.raises(AdapterFailed, match="does not match its checksum"):
        adapters.apply((tampered,))
    with pytest.raises(AdapterFailed, match="does not fit this model"):
        adapters.apply((refused,))
    with pytest.raises(AdapterFailed, match="not pinned"):
        adapters.apply((Adapter("unpinned"),))
    assert not pipe.enabled


def test_storage_trouble_is_raised_as_such_so_the_job_is_retried(
        store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapters, pipe = make_set(store, tmp_path)
    brand = stored(store, b"b" * 10)

    def outage(key: str, max_bytes: int | None = None) -> bytes:
        raise StorageError("connection reset")

    monkeypatch.setattr(store, "get", outage)
    with pytest.raises(StorageError):
        adapters.apply((brand,))
    assert not pipe.enabled
