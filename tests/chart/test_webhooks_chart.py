"""The `zq webhooks` dispatcher's Deployment and NetworkPolicy.

Rendered with the bundled Helm library; ci/production-values.yaml enables it, so the lint
and strict Kubernetes-schema validation in test_lint_and_validate.py cover it too.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    CI_VALUES,
    by_kind,
    env_of,
    load_values,
    render,
    render_values,
    workers,
)

NAME = "zq-zimage-queue-webhooks"
ENABLED = {"webhooks": {"enabled": True, "secret": {"existingSecret": "zq-webhook-secret"}}}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def policy(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(objects, "NetworkPolicy")[NAME]["spec"]


def test_off_by_default(helm) -> None:
    objects, _ = render("default-values.yaml")
    assert NAME not in by_kind(objects, "Deployment")
    assert NAME not in by_kind(objects, "NetworkPolicy")


@pytest.mark.parametrize("webhooks", [
    {"enabled": True},
    {"enabled": True, "secret": {"existingSecret": ""}},
])
def test_enabled_without_the_secret_is_refused_naming_the_key(
        helm, webhooks: dict[str, Any]) -> None:
    values = {"webhooks": webhooks}
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as schema_error:
            chart.validate_schema(values)
        with pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as render_error:
            chart.render(values, name="zq", namespace="zq")
    assert "/webhooks/secret" in str(schema_error.value)
    assert "webhooks" in str(render_error.value) and "existingSecret" in str(render_error.value)


def test_production_dispatchers_run_the_light_image_with_the_secret(helm) -> None:
    objects, _ = render("production-values.yaml")
    deployment = by_kind(objects, "Deployment")[NAME]
    assert deployment["spec"]["replicas"] == 2  # the outbox claim makes several safe
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert main["image"] == "registry.example.com/ml/zimage-queue-light:0.1.0"
    assert main["command"] == ["zq", "webhooks", "--poll=1", "--timeout=10",
                               "--max-attempts=8", "--backoff-base=2", "--backoff-max=600"]
    env = env_of(main)
    assert env["ZQ_WEBHOOK_SECRET"] == {"name": "ZQ_WEBHOOK_SECRET", "valueFrom": {
        "secretKeyRef": {"name": "zq-webhook-secret", "key": "webhook-secret"}}}
    assert env["ZQ_WEBHOOK_ALLOW"]["value"] == "hooks.corp.example.com,10.40.0.0/16"
    assert env["ZQ_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "zq-redis", "key": "url"}
    # Credentials to presign image URLs; nothing in the spec is a secret value.
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == \
        "zq-s3-credentials"
    assert all("value" not in env[name] for name in
               ("ZQ_WEBHOOK_SECRET", "ZQ_REDIS_URL", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY"))
    assert main["envFrom"] == [{"configMapRef": {"name": "zq-zimage-queue-config"}}]
    # The restricted profile, like the other components.
    values = load_values(CHART / "values.yaml")
    assert main["securityContext"] == values["securityContext"]
    assert pod["securityContext"] == values["podSecurityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}]
    assert main["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"},
                                 "limits": {"memory": "256Mi"}}
    # Serves nothing: no ports, no probes (see the template for why).
    assert not main.get("ports")
    assert not any(probe in main for probe in
                   ("livenessProbe", "readinessProbe", "startupProbe"))
    assert "gpu" not in yaml.safe_dump(main["resources"])


def test_settings_reach_the_command_line(helm) -> None:
    values = {"webhooks": {**ENABLED["webhooks"], "pollS": 0.5, "timeoutS": 5,
                           "maxAttempts": 3, "backoffBaseS": 1, "backoffMaxS": 60,
                           "secret": {"existingSecret": "s", "key": "k"}}}
    main = container(by_kind(render_values(helm, values), "Deployment")[NAME])
    assert main["command"] == ["zq", "webhooks", "--poll=0.5", "--timeout=5",
                               "--max-attempts=3", "--backoff-base=1", "--backoff-max=60"]
    assert env_of(main)["ZQ_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "s", "key": "k"}
    assert "ZQ_WEBHOOK_ALLOW" not in env_of(main)


def test_in_chart_redis_password_comes_from_its_secret(helm) -> None:
    main = container(by_kind(render_values(helm, ENABLED), "Deployment")[NAME])
    env = env_of(main)
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "zq-zimage-queue-redis"
    assert env["ZQ_REDIS_URL"]["value"] == \
        "redis://:$(REDIS_PASSWORD)@zq-zimage-queue-redis:6379/0"


def test_network_policy_dns_redis_and_https_receivers_out_nothing_in(helm) -> None:
    objects, _ = render("production-values.yaml")
    spec = policy(objects)
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "webhooks"
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert not spec.get("ingress")
    rules = spec["egress"]
    assert {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]} in rules
    assert {"ports": [{"port": 6379, "protocol": "TCP"}]} in rules  # external Redis, any address
    assert {"ports": [{"port": 443, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}]} in rules
    assert len(rules) == 3  # no storage rule: presigning is local


def test_receiver_egress_is_configurable_and_separate(helm) -> None:
    values = {**ENABLED, "networkPolicy": {"egress": {
        "webhooks": {"cidrs": ["203.0.113.0/24"], "ports": [443, 80]},
        "storage": {"cidrs": ["10.30.0.5/32"], "ports": [7480]}}}}
    objects = render_values(helm, values)
    rules = policy(objects)["egress"]
    assert rules[-1] == {
        "ports": [{"port": 443, "protocol": "TCP"}, {"port": 80, "protocol": "TCP"}],
        "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]}
    assert all(rule.get("ports") != [{"port": 7480, "protocol": "TCP"}] for rule in rules)
    # Other components never get the receivers' rule.
    for name, other in by_kind(objects, "NetworkPolicy").items():
        if name != NAME:
            assert "203.0.113.0/24" not in yaml.safe_dump(other), name
    disabled = render_values(helm, {**ENABLED, "networkPolicy": {"enabled": False}})
    assert not by_kind(disabled, "NetworkPolicy")
    assert NAME in by_kind(disabled, "Deployment")


def test_beat_gets_the_allow_list_it_checks_campaign_webhooks_with(helm) -> None:
    values = {"beat": {"enabled": True},
              "webhooks": {"allow": ["hooks.corp", "10.20.0.0/16"]}}
    beat = by_kind(render_values(helm, values), "Deployment")["zq-zimage-queue-beat"]
    assert env_of(container(beat))["ZQ_WEBHOOK_ALLOW"]["value"] == "hooks.corp,10.20.0.0/16"
    beat = by_kind(render_values(helm, {"beat": {"enabled": True}}),
                   "Deployment")["zq-zimage-queue-beat"]
    assert "ZQ_WEBHOOK_ALLOW" not in env_of(container(beat))


def test_an_allow_entry_with_a_comma_is_refused(helm) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as error:
        chart.validate_schema({"webhooks": {"allow": ["a.corp,b.corp"]}})
    assert "/webhooks/allow/0" in str(error.value)


def test_webhook_values_leave_every_gpu_pod_alone(helm) -> None:
    base = load_values(CI_VALUES / "production-values.yaml")
    changed = {**base, "webhooks": {**base["webhooks"], "replicas": 4, "timeoutS": 3,
                                    "allow": ["other.corp"]},
               "networkPolicy": {"egress": {"webhooks": {"ports": [8443]}}}}

    def templates(values: dict[str, Any]) -> dict[str, str]:
        return {model: yaml.safe_dump(d["spec"]["template"])
                for model, d in workers(render_values(helm, values)).items()}

    before = templates(base)
    assert before and before == templates(changed)


def test_notes_name_the_webhook_secret(helm) -> None:
    _, notes = render("production-values.yaml")
    assert "ZQ_WEBHOOK_SECRET from Secret\n  zq-webhook-secret (key webhook-secret)" in notes
    _, notes = render("default-values.yaml")
    assert "ZQ_WEBHOOK_SECRET" not in notes
