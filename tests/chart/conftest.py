"""Render the Helm chart with the bundled Helm library (no ``helm`` binary needed)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "zimage-queue"
CI_VALUES = CHART / "ci"
INVALID_VALUES = Path(__file__).resolve().parent / "invalid"
KUBE_VERSION = "1.30.0"
VALUES_FILES = sorted(p.name for p in CI_VALUES.glob("*-values.yaml"))


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="session")
def helm() -> Any:
    require(_have("helm_python"), "helm-python-sdk (the bundled Helm library)")
    import helm_python

    return helm_python


@pytest.fixture(scope="session")
def kube_validate() -> Any:
    require(_have("kubernetes_validate"), "kubernetes-validate")
    import kubernetes_validate

    return kubernetes_validate


def load_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


@functools.cache
def rendered_templates(values_file: str) -> tuple[tuple[str, str], ...]:
    """(template path, rendered text) pairs for a values file under ci/, rendered once."""
    import helm_python

    values = load_values(CI_VALUES / values_file)
    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="zq", namespace="zq")
    return tuple(sorted(rendered.items()))


def render(values_file: str) -> tuple[list[dict[str, Any]], str]:
    """Rendered objects of a values file under ci/, and NOTES.txt."""
    objects: list[dict[str, Any]] = []
    notes = ""
    for template, text in rendered_templates(values_file):
        if template.endswith("NOTES.txt"):
            notes = text
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects, notes


def render_values(helm: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Objects rendered from ``values`` (schema-checked first) as release zq in namespace zq."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name="zq", namespace="zq")
    return [doc for path, text in rendered.items() if path.endswith(".yaml")
            for doc in yaml.safe_load_all(text) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def workers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Worker Deployments by model type."""
    return {
        o["metadata"]["labels"]["zimage-queue/model"]: o
        for o in objects
        if o["kind"] == "Deployment" and "zimage-queue/model" in o["metadata"]["labels"]
    }


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}
