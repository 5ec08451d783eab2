"""The worker's adapter set on a fake pipeline: what is loaded, active, evicted, refused."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from common.adapter_registry import file_key
from common.adapters import Adapter
from common.errors import AdapterFailed, StorageError
from common.storage import LocalStore
from worker.adapters import AdapterSet, HotswapSlots, peft_name


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


def test_resident_sha256s_names_the_files_loaded_now(store: LocalStore, tmp_path: Path) -> None:
    adapters, _ = make_set(store, tmp_path, budget=150)
    a, b = stored(store, b"a" * 100, "a"), stored(store, b"b" * 100, "b")
    assert adapters.resident_sha256s() == frozenset()
    adapters.apply((a,))
    adapters.apply((b,))  # past the budget: a leaves
    assert adapters.resident_sha256s() == {b.sha256}


MODULE = "layers.0.attention.to_q"
SLOTS = HotswapSlots(("slot0", "slot1"), max_rank=4, shapes={MODULE: (8, 8)},
                     dtype=torch.float32, device=torch.device("cpu"))


class FakeHotswapPipeline(FakePipeline):
    """A pipeline whose transformer holds two slots: records swaps, reads files' ranks."""

    def __init__(self, ranks: dict[str, int] | None = None, refuse: set[str] | None = None,
                 other_module: set[str] | None = None) -> None:
        super().__init__()
        self.ranks = ranks or {}
        self.refuse_files = refuse or set()
        self.other_module = other_module or set()
        self.transformer = torch.nn.Module()
        self.transformer.peft_config = dict.fromkeys(SLOTS.names)  # type: ignore[assignment]

    def lora_state_dict(self, path: str) -> dict[str, torch.Tensor]:
        sha256 = Path(path).stem
        rank = self.ranks.get(sha256, 2)
        module = "layers.0.feed_forward.w9" if sha256 in self.other_module else MODULE
        return {f"transformer.{module}.lora_A.weight": torch.zeros(rank, 8),
                f"transformer.{module}.lora_B.weight": torch.zeros(8, rank)}

    def load_lora_weights(self, path: Any, adapter_name: str, hotswap: bool = False) -> None:
        assert hotswap and adapter_name in SLOTS.names, "the graph's adapters must not change"
        if isinstance(path, dict):
            self.calls.append(f"reset {adapter_name}")
            return
        sha256 = Path(path).stem
        self.calls.append(f"swap {adapter_name} {sha256[:4]}")
        if sha256 in self.refuse_files:
            raise RuntimeError("Hot swapping the adapter did not succeed")


def hotswap_set(store: LocalStore, tmp_path: Path, pipe: FakeHotswapPipeline) -> AdapterSet:
    return AdapterSet(pipe, store, tmp_path / "cache", 0, hotswap=SLOTS)


def test_hotswap_fills_slots_least_recently_used_first_and_never_changes_the_graph(
        store: LocalStore, tmp_path: Path) -> None:
    pipe = FakeHotswapPipeline()
    adapters = hotswap_set(store, tmp_path, pipe)
    a, b, c = (stored(store, bytes([n]) * 100, f"n{n}") for n in range(3))
    adapters.apply((a,))
    adapters.apply((b,))
    assert adapters.slot_weights == {"slot0": 0.0, "slot1": 1.0}  # b alone
    adapters.apply((Adapter("n0", 0.5, a.sha256),))  # a hit: a is now the most recent
    assert adapters.slot_weights == {"slot0": 0.5, "slot1": 0.0}
    adapters.apply((c,))  # b's slot is the least recently used
    assert adapters.slots == {"slot0": a.sha256, "slot1": c.sha256}
    assert not (tmp_path / "cache" / f"{b.sha256}.safetensors").exists()
    adapters.apply((b, Adapter("n2", -0.5, c.sha256)))  # a goes: c belongs to this job
    assert adapters.slots == {"slot1": c.sha256, "slot0": b.sha256}
    assert adapters.slot_weights == {"slot0": 1.0, "slot1": -0.5}
    assert adapters.resident_sha256s() == {b.sha256, c.sha256}
    adapters.apply(())  # a plain job: every slot at scale 0, nothing loaded or disabled
    assert adapters.slot_weights == {"slot0": 0.0, "slot1": 0.0}
    assert pipe.calls == [f"swap slot0 {a.sha256[:4]}", f"swap slot1 {b.sha256[:4]}",
                          f"swap slot1 {c.sha256[:4]}", f"swap slot0 {b.sha256[:4]}"]
    assert (adapters.stats.loads, adapters.stats.hits, adapters.stats.evictions) == (4, 2, 2)
    assert len(adapters.resident) == 2 and adapters.resident_bytes == 200


def test_hotswap_refuses_what_the_slots_cannot_take_before_touching_them(
        store: LocalStore, tmp_path: Path) -> None:
    a, big, ffn, bad = (stored(store, bytes([n]) * 10, f"n{n}") for n in range(4))
    pipe = FakeHotswapPipeline(ranks={str(big.sha256): 8}, other_module={str(ffn.sha256)},
                               refuse={str(bad.sha256)})
    adapters = hotswap_set(store, tmp_path, pipe)
    adapters.apply((a,))
    with pytest.raises(AdapterFailed, match="has LoRA rank 8, above this worker's limit of 4"):
        adapters.apply((big,))
    with pytest.raises(AdapterFailed, match=r"feed_forward\.w9, which this compiled worker's "
                                            r"adapter slots do not cover"):
        adapters.apply((ffn,))
    with pytest.raises(AdapterFailed, match="at most 2 adapters"):
        adapters.apply((a, big, ffn))
    assert pipe.calls == [f"swap slot0 {a.sha256[:4]}"]  # refused before any swap
    assert adapters.slot_weights == {"slot0": 0.0, "slot1": 0.0}
    # A swap that fails half way leaves its slot emptied, and the job failed.
    with pytest.raises(AdapterFailed, match="does not fit this model"):
        adapters.apply((bad,))
    assert pipe.calls[-2:] == [f"swap slot1 {bad.sha256[:4]}", "reset slot1"]
    assert adapters.slots == {"slot0": a.sha256, "slot1": None}
    assert adapters.resident_sha256s() == {a.sha256}
    adapters.apply((a,))
    assert adapters.stats.hits == 1 and adapters.slot_weights["slot0"] == 1.0
