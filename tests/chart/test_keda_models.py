"""The chart's KEDA objects validated against KEDA's own models (@kubernetes-models/keda)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.chart.conftest import by_kind, render
from tests.conftest import require

KEDA = Path(__file__).parent / "keda"


@pytest.fixture(scope="module")
def node() -> str:
    """Node with the KEDA models installed (``scripts/test`` runs ``npm ci`` for them)."""
    found = shutil.which("node")
    require(found is not None and (KEDA / "node_modules" / "@kubernetes-models").is_dir(),
            "node and the KEDA models (npm ci --prefix tests/chart/keda)")
    assert found is not None
    return found


def validate(node: str, objects: list[dict[str, object]]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node, str(KEDA / "validate.mjs")], input=json.dumps(objects),
                          capture_output=True, text=True, timeout=60, cwd=KEDA)


@pytest.mark.parametrize("values_file", ["production-values.yaml", "scale-to-zero-values.yaml"])
def test_scaled_objects_are_valid_keda(helm: object, node: str, values_file: str) -> None:
    objects, _ = render(values_file)
    keda = [*by_kind(objects, "ScaledObject").values(),
            *by_kind(objects, "TriggerAuthentication").values()]
    assert keda, "these values turn autoscaling on"
    done = validate(node, keda)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": valid") == len(keda)


def test_a_malformed_scaled_object_is_refused(helm: object, node: str) -> None:
    objects, _ = render("scale-to-zero-values.yaml")
    broken = dict(next(iter(by_kind(objects, "ScaledObject").values())))
    broken["spec"] = {**broken["spec"], "minReplicaCount": "zero"}  # type: ignore[dict-item]
    done = validate(node, [broken])
    assert done.returncode == 1
    assert "minReplicaCount must be integer" in done.stdout
