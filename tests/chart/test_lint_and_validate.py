"""The chart lints strictly and every rendered object is valid Kubernetes (strict schemas)."""

from __future__ import annotations

import copy

import pytest

from tests.chart.conftest import (
    CHART,
    CI_VALUES,
    KUBE_VERSION,
    VALUES_FILES,
    load_values,
    render,
    workers,
)

# Custom resources: kubernetes-validate has no schema for them; they are checked by the
# assertions in test_manifests.py.
CUSTOM_KINDS = {"ScaledObject", "PodMonitor", "ServiceMonitor", "PrometheusRule"}


def test_values_files_cover_the_documented_cases() -> None:
    assert set(VALUES_FILES) >= {
        "default-values.yaml",
        "production-values.yaml",
        "scale-to-zero-values.yaml",
        "single-model-values.yaml",
    }


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_lint_strict(helm, values_file: str) -> None:
    report = helm.lint(
        CHART,
        load_values(CI_VALUES / values_file),
        strict=True,
        kube_version=f"v{KUBE_VERSION}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"], report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_every_object_is_valid_kubernetes(helm, kube_validate, values_file: str) -> None:
    objects, _ = render(values_file)
    assert objects
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kube_validate.validate(obj, KUBE_VERSION, strict=True)
        except kube_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} ({values_file}): {exc}")


def test_strict_validation_catches_a_misspelt_field(helm, kube_validate) -> None:
    objects, _ = render("default-values.yaml")
    deployment = copy.deepcopy(workers(objects)["turbo"])
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 10
    with pytest.raises(kube_validate.ValidationError):
        kube_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_only_known_custom_resources(helm) -> None:
    kinds = {o["kind"] for f in VALUES_FILES for o in render(f)[0]}
    builtin = {
        "ConfigMap",
        "Deployment",
        "StatefulSet",
        "Service",
        "ServiceAccount",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Secret",
        "Ingress",
        "HorizontalPodAutoscaler",
    }
    assert kinds - builtin <= CUSTOM_KINDS
