"""Adapters in the job spec, and the registry that pins their names to files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save

from common.adapter_registry import AdapterRegistry, file_key, inspect_lora, record_key
from common.adapters import MAX_ADAPTERS, Adapter, parse_adapters
from common.errors import InvalidJob
from common.job import JobKind, JobSpec, ModelType, new_job
from common.storage import LocalStore


def lora_file(rank: int = 2, seed: int = 0) -> bytes:
    """A small .safetensors file in the PEFT/diffusers LoRA key layout."""
    rng = np.random.default_rng(seed)
    return save({
        "transformer.layers.0.attention.to_q.lora_A.weight": rng.standard_normal(
            (rank, 8)).astype(np.float32),
        "transformer.layers.0.attention.to_q.lora_B.weight": rng.standard_normal(
            (8, rank)).astype(np.float32),
    })


# -- the spec ----------------------------------------------------------------------------


@pytest.mark.parametrize("given", [
    "acme:0.8 other", "acme:0.8,other", "acme:0.8;other",
    ["acme:0.8", "other"],
    [{"name": "acme", "weight": 0.8}, {"name": "other"}],
    [Adapter("acme", 0.8), Adapter("other")],
])
def test_adapters_may_be_given_as_a_producer_writes_them(given: object) -> None:
    spec = new_job(JobKind.GENERATE, prompt="p", adapters=given)
    assert spec.adapters == (Adapter("acme", 0.8), Adapter("other", 1.0))


def test_a_spec_with_adapters_round_trips_and_one_without_serialises_as_before() -> None:
    spec = new_job(JobKind.GENERATE, prompt="p", adapters=[{"name": "acme", "weight": -0.5,
                                                             "sha256": "a" * 64}])
    data = spec.to_dict()
    assert data["adapters"] == [{"name": "acme", "weight": -0.5, "sha256": "a" * 64}]
    assert JobSpec.from_dict(json.loads(json.dumps(data))) == spec
    assert "adapters" not in new_job(JobKind.GENERATE, prompt="p").to_dict()


@pytest.mark.parametrize(("given", "says"), [
    ([f"a{n}" for n in range(MAX_ADAPTERS + 1)], f"at most {MAX_ADAPTERS} adapters"),
    ("acme:2.5", "between -2.0 and 2.0"),
    ("acme:nan", "between -2.0 and 2.0"),
    ("acme:heavy", "a number"),
    ([{"name": "acme", "weight": True}], "a number"),
    ("acme acme:0.5", "at most once"),
    ("brand.v2", "an adapter name is"),
    ("-acme", "an adapter name is"),
    ([{"name": "acme", "scale": 1}], "not scale"),
    ([{"weight": 1}], "needs a name"),
    ([{"name": "acme", "sha256": "xyz"}], "64 lower-case hex"),
    (7, "a list of"),
    ([7], "each adapter is"),
])
def test_bad_adapters_are_refused_naming_the_field_and_the_rule(given: object,
                                                                says: str) -> None:
    with pytest.raises(InvalidJob, match=says) as caught:
        new_job(JobKind.GENERATE, prompt="p", adapters=given)
    assert caught.value.field == "adapters"


def test_a_spec_read_back_with_bad_adapters_is_refused() -> None:
    data = new_job(JobKind.GENERATE, prompt="p").to_dict()
    with pytest.raises(InvalidJob) as caught:
        JobSpec.from_dict({**data, "adapters": [{"name": "x", "weight": 9}]})
    assert caught.value.field == "adapters"


def test_nothing_is_no_adapters() -> None:
    assert parse_adapters(None) == parse_adapters("") == parse_adapters([]) == ()


# -- the file check ----------------------------------------------------------------------


def test_a_lora_file_is_recognised_by_its_header() -> None:
    assert inspect_lora(lora_file()) == 2


@pytest.mark.parametrize(("data", "says"), [
    (b"", "safetensors"),
    (b"\x00" * 7, "safetensors"),
    ((10**12).to_bytes(8, "little") + b"{}", "no safetensors header"),
    ((4).to_bytes(8, "little") + b"nope", "not JSON"),
    ((2).to_bytes(8, "little") + b"[]", "not a table"),
    (save({"unet.conv.weight": np.zeros((2, 2), np.float32)}), "no tensor is a LoRA weight"),
])
def test_what_is_not_a_lora_file_is_refused(data: bytes, says: str) -> None:
    with pytest.raises(InvalidJob, match=says) as caught:
        inspect_lora(data)
    assert caught.value.field == "file"


def test_a_tensor_past_the_end_of_the_file_is_refused() -> None:
    whole = lora_file()
    with pytest.raises(InvalidJob, match="outside the file"):
        inspect_lora(whole[:-4])


# -- the registry ------------------------------------------------------------------------


@pytest.fixture
def registry(tmp_path: Path) -> AdapterRegistry:
    return AdapterRegistry(LocalStore(tmp_path / "store"))


def test_add_stores_the_file_by_checksum_then_the_record(registry: AdapterRegistry) -> None:
    record = registry.add("acme", lora_file(), [ModelType.BASE, ModelType.TURBO])
    assert registry.store.get(file_key(record.sha256)) == lora_file()
    assert json.loads(registry.store.get(record_key("acme")))["sha256"] == record.sha256
    assert (record.size, record.tensors, record.models) == (
        len(lora_file()), 2, (ModelType.BASE, ModelType.TURBO))
    assert [r.name for r in registry.records()] == ["acme"]
    # The same file again is the same record; another file needs --replace.
    assert registry.add("acme", lora_file(), [ModelType.TURBO, ModelType.BASE]) == record
    with pytest.raises(InvalidJob, match="--replace") as caught:
        registry.add("acme", lora_file(seed=1), [ModelType.BASE])
    assert caught.value.field == "name"
    replaced = registry.add("acme", lora_file(seed=1), [ModelType.BASE], replace=True)
    assert replaced.sha256 != record.sha256
    assert registry.store.exists(file_key(record.sha256))  # kept for replays


@pytest.mark.parametrize(("name", "models", "field"), [
    ("brand.v2", [ModelType.BASE], "name"),
    ("acme", [], "model"),
])
def test_add_refuses_a_bad_name_or_no_model(registry: AdapterRegistry, name: str,
                                            models: list[ModelType], field: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        registry.add(name, lora_file(), models)
    assert caught.value.field == field
    assert registry.records() == []


def test_pin_resolves_names_to_checksums_for_the_jobs_model(registry: AdapterRegistry) -> None:
    record = registry.add("acme", lora_file(), [ModelType.TURBO])
    spec = new_job(JobKind.GENERATE, prompt="p", adapters="acme:0.7")
    pinned = registry.pin(spec)
    assert pinned.adapters == (Adapter("acme", 0.7, record.sha256),)
    assert pinned.job_id == spec.job_id
    base = new_job(JobKind.GENERATE, prompt="p", model="base", adapters="acme")
    with pytest.raises(InvalidJob, match="adapter acme is for turbo, not base"):
        registry.pin(base)
    with pytest.raises(InvalidJob, match="a registered adapter") as caught:
        registry.pin(new_job(JobKind.GENERATE, prompt="p", adapters="nobody"))
    assert caught.value.field == "adapters"


def test_a_pinned_adapter_keeps_its_file_after_the_name_moves(registry: AdapterRegistry) -> None:
    old = registry.add("acme", lora_file(), [ModelType.TURBO])
    spec = registry.pin(new_job(JobKind.GENERATE, prompt="p", adapters="acme"))
    registry.add("acme", lora_file(seed=1), [ModelType.TURBO], replace=True)
    assert registry.pin(spec).adapters[0].sha256 == old.sha256  # a replay renders the old one
    gone = new_job(JobKind.GENERATE, prompt="p", adapters=[{"name": "acme", "sha256": "b" * 64}])
    with pytest.raises(InvalidJob, match="a stored adapter file"):
        registry.pin(gone)
