"""The chart's safety gate: on by default, its settings reach every worker, off when asked."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import by_kind, env_of, render, render_values, workers

# Keys that do not need anything outside the chart (no Secrets): the in-chart Redis, no S3.
BASE: dict[str, Any] = {"storage": {"url": "file:///data"}}


def config_of(objects: list[dict[str, Any]]) -> dict[str, str]:
    return next(iter(by_kind(objects, "ConfigMap").values()))["data"]  # type: ignore[no-any-return]


def test_the_gate_is_on_by_default_with_a_real_classifier() -> None:
    objects, _ = render("default-values.yaml")
    data = config_of(objects)
    assert data["ZQ_SAFETY_MODEL"] == "Falconsai/nsfw_image_detection"
    assert (data["ZQ_SAFETY_THRESHOLD"], data["ZQ_SAFETY_LABELS"]) == ("0.5", "nsfw")
    config_map = next(iter(by_kind(objects, "ConfigMap")))
    assert workers(objects)
    for deployment in workers(objects).values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert {"configMapRef": {"name": config_map}} in container["envFrom"]


def test_prefetch_downloads_the_classifier_too() -> None:
    objects, _ = render("gpu-pool-values.yaml")
    prefetching = [d for d in workers(objects).values()
                   if d["spec"]["template"]["spec"].get("initContainers")]
    assert prefetching
    for deployment in prefetching:
        init = deployment["spec"]["template"]["spec"]["initContainers"][0]
        assert env_of(init)["ZQ_SAFETY_MODEL"]["value"] == "Falconsai/nsfw_image_detection"
        assert "ZQ_SAFETY_MODEL" in init["command"][2]


def test_safety_values_become_worker_settings(helm: Any) -> None:
    objects = render_values(helm, {**BASE, "safety": {
        "model": "/models/safety", "threshold": 0.85, "labels": ["porn", "hentai"],
        "promptBlocklist": ["gore", r"re:\bkill\w*"], "gate": "acme"}})
    data = config_of(objects)
    assert data["ZQ_SAFETY_MODEL"] == "/models/safety"
    assert (data["ZQ_SAFETY_THRESHOLD"], data["ZQ_SAFETY_LABELS"]) == ("0.85", "porn,hentai")
    assert data["ZQ_SAFETY_PROMPT_BLOCKLIST"] == r"gore,re:\bkill\w*"
    assert data["ZQ_SAFETY_GATE"] == "acme"


def test_the_gate_can_be_turned_off(helm: Any) -> None:
    data = config_of(render_values(helm, {**BASE, "safety": {"enabled": False}}))
    assert not any(key.startswith("ZQ_SAFETY_") for key in data)


@pytest.mark.parametrize("safety", [{"threshold": 1.5}, {"labels": []},
                                    {"promptBlocklist": ["a,b"]}, {"colour": "red"}])
def test_bad_safety_values_are_refused(helm: Any, safety: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="safety"):
        render_values(helm, {**BASE, "safety": safety})
