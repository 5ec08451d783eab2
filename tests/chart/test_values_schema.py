"""values.schema.json rejects malformed values with a message naming the key."""

from __future__ import annotations

import pytest

from tests.chart.conftest import CHART, CI_VALUES, INVALID_VALUES, VALUES_FILES, load_values

# invalid file -> text the error must contain (the offending key's path)
INVALID = {
    "unknown-model.yaml": ["/workers", "'flux'"],
    "gpu-zero.yaml": ["/workers/turbo/gpu", "minimum"],
    "gpu-two.yaml": ["/workers/base/gpu", "maximum"],
    "missing-s3-secret.yaml": ["/storage/s3/existingSecret"],
    "missing-redis-secret.yaml": ["/externalRedis/existingSecret"],
    "unknown-dtype.yaml": ["/workers/base/dtype", "must be one of 'auto', 'bfloat16'"],
}


def test_every_invalid_file_has_an_expectation() -> None:
    assert {p.name for p in INVALID_VALUES.glob("*.yaml")} == set(INVALID)


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_ci_values_pass_the_schema(helm, values_file: str) -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(load_values(CI_VALUES / values_file))


@pytest.mark.parametrize(("values_file", "expected"), sorted(INVALID.items()))
def test_invalid_values_are_rejected_naming_the_key(
    helm, values_file: str, expected: list[str]
) -> None:
    values = load_values(INVALID_VALUES / values_file)
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as schema_error:
            chart.validate_schema(values)
        # Rendering (helm template / install) refuses them the same way.
        with pytest.raises(helm.HelmValuesError) as render_error:
            chart.render(values, name="zq", namespace="zq")
    for error in (schema_error, render_error):
        for text in expected:
            assert text in str(error.value)


def test_instance_role_needs_no_s3_secret(helm) -> None:
    values = {"storage": {"s3": {"existingSecret": "", "useInstanceRole": True}}}
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name="zq", namespace="zq")
    assert "AWS_SECRET_ACCESS_KEY" not in "".join(rendered.values())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"workerDefaults": {"terminationGracePeriodSeconds": 60}}, "must exceed"),
    ],
)
def test_grace_shorter_than_a_job_fails(helm, values, message: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as error:
        chart.render(values, name="zq", namespace="zq")
    assert message in str(error.value)
