"""The chart gives each worker room for its LoRA adapters: a budget and a volume that fits."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import by_kind, render_values, workers

BASE: dict[str, Any] = {"storage": {"url": "file:///data"}}


@pytest.mark.parametrize("cache_mb", [2048, 512])
def test_each_worker_keeps_adapters_on_a_volume_sized_to_the_budget(helm: Any,
                                                                    cache_mb: int) -> None:
    values = BASE if cache_mb == 2048 else {**BASE, "adapters": {"cacheMb": cache_mb}}
    objects = render_values(helm, values)
    data = next(iter(by_kind(objects, "ConfigMap").values()))["data"]
    assert data["ZQ_ADAPTER_CACHE_MB"] == str(cache_mb)
    assert data["ZQ_ADAPTER_DIR"] == "/var/cache/zq-adapters"
    assert workers(objects)
    for deployment in workers(objects).values():
        pod = deployment["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "adapters")
        assert volume["emptyDir"] == {"sizeLimit": f"{cache_mb + 256}Mi"}
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "adapters", "mountPath": "/var/cache/zq-adapters"} in mounts


def test_adapter_routing_and_hot_swap_settings_reach_the_workers(helm: Any) -> None:
    data = next(iter(by_kind(render_values(helm, BASE), "ConfigMap").values()))["data"]
    assert (data["ZQ_ADAPTER_PASS_S"], data["ZQ_ADAPTER_SLOTS"],
            data["ZQ_ADAPTER_MAX_RANK"]) == ("10", "2", "64")
    values = {**BASE, "adapters": {"passSeconds": 0, "slots": 4, "maxRank": 128}}
    data = next(iter(by_kind(render_values(helm, values), "ConfigMap").values()))["data"]
    assert (data["ZQ_ADAPTER_PASS_S"], data["ZQ_ADAPTER_SLOTS"],
            data["ZQ_ADAPTER_MAX_RANK"]) == ("0", "4", "128")


@pytest.mark.parametrize("adapters", [{"cacheMb": -1}, {"cacheMb": "2G"}, {"size": 1},
                                      {"passSeconds": -1}, {"slots": 0}, {"maxRank": "64"}])
def test_bad_adapter_values_are_refused(helm: Any, adapters: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="adapters"):
        render_values(helm, {**BASE, "adapters": adapters})
