"""The `zq api` Deployment, Service, HPA, Ingress and NetworkPolicy.

Rendered with the bundled Helm library; ci/production-values.yaml enables the API with an
Ingress and an HPA, so the lint and strict Kubernetes-schema validation in
test_lint_and_validate.py cover them too.
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

NAME = "zq-zimage-queue-api"
ENABLED = {"api": {"enabled": True, "keys": {"existingSecret": "zq-api-keys"}}}


def render_error(helm: Any, values: dict[str, Any]) -> str:
    with (helm.Chart.load(CHART) as chart,
          pytest.raises((helm.HelmValuesError, helm.HelmRenderError)) as error):
        chart.render(values, name="zq", namespace="zq")
    return str(error.value)


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def test_off_by_default(helm) -> None:
    objects, notes = render("default-values.yaml")
    for kind in ("Deployment", "Service", "NetworkPolicy", "Ingress", "HorizontalPodAutoscaler"):
        assert NAME not in by_kind(objects, kind), kind
    assert "HTTP API" not in notes


@pytest.mark.parametrize("api", [
    {"enabled": True},
    {"enabled": True, "keys": {"existingSecret": ""}},
])
def test_enabled_without_keys_is_refused_naming_the_key(helm, api: dict[str, Any]) -> None:
    values = {"api": api}
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as schema_error:
        chart.validate_schema(values)
    assert "/api/keys" in str(schema_error.value)
    message = render_error(helm, values)
    assert "api.keys.existingSecret" in message or "/api/keys/existingSecret" in message


def test_production_api_runs_the_light_image_with_its_keys(helm) -> None:
    objects, _ = render("production-values.yaml")
    deployment = by_kind(objects, "Deployment")[NAME]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    pod = deployment["spec"]["template"]["spec"]
    main = container(deployment)
    assert main["image"] == "registry.example.com/ml/zimage-queue-light:0.1.0"
    assert main["command"] == ["zq", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert main["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    env = env_of(main)
    mount = next(m for m in main["volumeMounts"] if m["name"] == "api-keys")
    assert mount["readOnly"] is True
    assert env["ZQ_API_KEYS_FILE"]["value"] == f"{mount['mountPath']}/keys"
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"] == {"secretName": "zq-api-keys", "defaultMode": 0o440,
                                "items": [{"key": "keys", "path": "keys"}]}
    assert "ZQ_API_KEYS" not in env
    assert env["ZQ_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {"name": "zq-redis", "key": "url"}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "zq-s3-credentials"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == \
        "zq-s3-credentials"
    assert env["ZQ_WEBHOOK_ALLOW"]["value"] == "hooks.corp.example.com,10.40.0.0/16"
    assert all("value" not in env[name] for name in
               ("ZQ_REDIS_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    assert main["envFrom"] == [{"configMapRef": {"name": "zq-zimage-queue-config"}}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"] == {"path": "/openapi.json", "port": "http"}, probe
    assert "startupProbe" not in main
    values = load_values(CHART / "values.yaml")
    assert main["securityContext"] == values["securityContext"]
    assert pod["securityContext"] == values["podSecurityContext"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["imagePullSecrets"] == [{"name": "registry-pull"}]
    assert main["resources"] == values["api"]["resources"]
    assert "gpu" not in yaml.safe_dump(main["resources"])


def test_service_hpa_and_ingress(helm) -> None:
    objects, notes = render("production-values.yaml")
    service = by_kind(objects, "Service")[NAME]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"] == [{"name": "http", "port": 8000, "targetPort": "http",
                                 "protocol": "TCP"}]
    assert service["selector"]["app.kubernetes.io/component"] == "api"
    hpa = by_kind(objects, "HorizontalPodAutoscaler")[NAME]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert hpa["metrics"] == [{"type": "Resource", "resource": {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
    ingress = by_kind(objects, "Ingress")[NAME]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == \
        "off"
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "zq-api-tls", "hosts": ["zq.example.com"]}]
    assert spec["rules"] == [{"host": "zq.example.com", "http": {"paths": [{
        "path": "/", "pathType": "Prefix",
        "backend": {"service": {"name": NAME, "port": {"name": "http"}}}}]}}]
    assert "https://zq.example.com/docs" in notes
    assert "svc/zq-zimage-queue-api 8000" in notes


def test_fixed_replicas_port_and_in_chart_redis(helm) -> None:
    values = {"api": {**ENABLED["api"], "replicas": 3, "port": 9000,
                      "keys": {"existingSecret": "k", "key": "api-keys.txt"}}}
    objects = render_values(helm, values)
    deployment = by_kind(objects, "Deployment")[NAME]
    assert deployment["spec"]["replicas"] == 3
    main = container(deployment)
    assert main["command"][-2:] == ["--port", "9000"]
    env = env_of(main)
    assert env["ZQ_API_KEYS_FILE"]["value"].endswith("/api-keys.txt")
    assert env["ZQ_REDIS_URL"]["value"] == \
        "redis://:$(REDIS_PASSWORD)@zq-zimage-queue-redis:6379/0"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "zq-zimage-queue-redis"
    assert "ZQ_WEBHOOK_ALLOW" not in env
    assert by_kind(objects, "Service")[NAME]["spec"]["ports"][0]["port"] == 9000
    assert NAME not in by_kind(objects, "HorizontalPodAutoscaler")
    assert NAME not in by_kind(objects, "Ingress")
    # The in-chart Redis admits the API pod: it selects every pod of the release.
    redis_policy = by_kind(objects, "NetworkPolicy")["zq-zimage-queue-redis"]["spec"]
    admitted = redis_policy["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert admitted.items() <= labels.items()


def test_ingress_without_hosts_and_inverted_hpa_bounds_are_refused(helm) -> None:
    values = {"api": {**ENABLED["api"], "ingress": {"enabled": True}}}
    assert "api.ingress.hosts" in render_error(helm, values)
    values = {"api": {**ENABLED["api"],
                      "autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}}
    assert "api.autoscaling.minReplicas" in render_error(helm, values)


def test_network_policy_open_front_door_by_default(helm) -> None:
    objects = render_values(helm, ENABLED)
    spec = by_kind(objects, "NetworkPolicy")[NAME]["spec"]
    assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "api"
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"ports": [{"port": 8000, "protocol": "TCP"}]}]  # any source
    rules = spec["egress"]
    assert {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]} in rules
    assert any(rule.get("to", [{}])[0].get("podSelector", {}).get("matchLabels", {})
               .get("app.kubernetes.io/component") == "redis" for rule in rules)
    assert {"ports": [{"port": 443, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]} in rules  # storage: uploads
    assert len(rules) == 3


def test_network_policy_api_from_narrows_the_sources(helm) -> None:
    objects, _ = render("production-values.yaml")
    spec = by_kind(objects, "NetworkPolicy")[NAME]["spec"]
    assert spec["ingress"] == [{
        "ports": [{"port": 8000, "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": "ingress-nginx"}}}]}, PROMETHEUS_RULE]
    assert {"ports": [{"port": 6379, "protocol": "TCP"}]} in spec["egress"]  # external Redis
    disabled = render_values(helm, {**ENABLED, "networkPolicy": {"enabled": False}})
    assert not by_kind(disabled, "NetworkPolicy")
    assert NAME in by_kind(disabled, "Deployment")


PROMETHEUS_RULE = {
    "ports": [{"port": 8000, "protocol": "TCP"}],
    "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
              "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]}


def test_prometheus_scrapes_each_api_pod_like_the_workers(helm) -> None:
    # GET /metrics is on the API port without a key: a PodMonitor (as for the workers) finds
    # every replica, and Prometheus gets through however far apiFrom narrows the sources.
    monitoring = {"monitoring": {"podMonitor": {"enabled": True}}}
    api_from = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "edge"}}}]
    objects = render_values(helm, {**ENABLED, **monitoring, "api": {**ENABLED["api"],
                                                                    "port": 8080},
                                   "networkPolicy": {"apiFrom": api_from}})
    monitor = by_kind(objects, "PodMonitor")[NAME]
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"] == (
        by_kind(objects, "Deployment")[NAME]["spec"]["selector"]["matchLabels"])
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert {"targetLabel": "job", "replacement": "zq-api"} in endpoint["relabelings"]
    assert "http" in {p["name"] for p in container(
        by_kind(objects, "Deployment")[NAME])["ports"]}
    ingress = by_kind(objects, "NetworkPolicy")[NAME]["spec"]["ingress"]
    port = [{"port": 8080, "protocol": "TCP"}]
    assert ingress == [{"ports": port, "from": api_from},
                       {**PROMETHEUS_RULE, "ports": port}]
    assert by_kind(objects, "PodMonitor").keys() == {NAME, "zq-zimage-queue-workers"}
    # Off with the API or with the PodMonitors.
    assert NAME not in by_kind(render_values(helm, monitoring), "PodMonitor")
    assert not by_kind(render_values(helm, ENABLED), "PodMonitor")


def test_api_values_leave_every_gpu_pod_alone(helm) -> None:
    base = load_values(CI_VALUES / "production-values.yaml")
    changed = {**base, "api": {**base["api"], "port": 8080, "replicas": 5,
                               "keys": {"existingSecret": "other", "key": "k"},
                               "ingress": {"enabled": False}},
               "networkPolicy": {"apiFrom": []}}

    def templates(values: dict[str, Any]) -> dict[str, str]:
        return {model: yaml.safe_dump(d["spec"]["template"])
                for model, d in workers(render_values(helm, values)).items()}

    before = templates(base)
    assert before and before == templates(changed)
