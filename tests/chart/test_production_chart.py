"""Production concerns of the chart: release-scoped autoscaling, broker auth, network policy,
upgrades that leave GPU pods alone, and the cost of the autoscaler's cooldown."""

from __future__ import annotations

import base64
import copy
import re
from typing import Any

import pytest
import yaml

from tests.chart.conftest import CHART, CI_VALUES, by_kind, env_of, load_values, workers

AUTOSCALED = {
    "workerDefaults": {"autoscaling": {"enabled": True}},
    "monitoring": {"serviceMonitor": {"enabled": True}},
}


def render_objects(helm: Any, values: dict[str, Any], name: str = "zq",
                   namespace: str = "zq") -> tuple[list[dict[str, Any]], dict[str, str]]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=name, namespace=namespace)
    objects = [doc for path, text in rendered.items() if path.endswith(".yaml")
               for doc in yaml.safe_load_all(text) if doc]
    return objects, rendered


def render_error(helm: Any, values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as error:
        chart.render(values, name="zq", namespace="zq")
    return str(error.value)


def merged(*layers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        _merge(out, copy.deepcopy(layer))
    return out


def _merge(into: dict[str, Any], layer: dict[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def queries(objects: list[dict[str, Any]]) -> set[str]:
    return {so["spec"]["triggers"][0]["metadata"]["query"]
            for so in by_kind(objects, "ScaledObject").values()}


# -- KEDA: release-scoped queries, a scrape path, fallback -----------------------------------

def test_two_releases_in_two_namespaces_scale_on_their_own_queues(helm) -> None:
    staging, _ = render_objects(helm, AUTOSCALED, name="zq", namespace="staging")
    prod, _ = render_objects(helm, AUTOSCALED, name="zq", namespace="prod")
    assert len(queries(staging)) == len(queries(prod)) == 3
    assert not queries(staging) & queries(prod)
    assert 'max(zq_queue_load{model="edit", namespace="prod", zq_release="zq"})' in queries(prod)
    # Two releases in one namespace differ too.
    other, _ = render_objects(helm, AUTOSCALED, name="zq-canary", namespace="prod")
    assert not queries(other) & queries(prod)
    # The label the queries select on is the one the ServiceMonitor's scrape adds (the
    # operator adds `namespace` itself).
    (monitor,) = by_kind(prod, "ServiceMonitor").values()
    relabelings = monitor["spec"]["endpoints"][0]["relabelings"]
    assert {"targetLabel": "zq_release", "replacement": "zq"} in relabelings
    assert {"targetLabel": "job", "replacement": "zq-exporter"} in relabelings


def test_service_monitor_carries_the_label_kube_prometheus_stack_selects(helm) -> None:
    objects, _ = render_objects(helm, merged(AUTOSCALED, {
        "monitoring": {"podMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}}}))
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        (obj,) = by_kind(objects, kind).values()
        assert obj["metadata"]["labels"]["release"] == "kube-prometheus-stack", kind
    objects, _ = render_objects(helm, merged(AUTOSCALED, {
        "monitoring": {"serviceMonitor": {"labels": {"release": "prometheus"}}}}))
    (monitor,) = by_kind(objects, "ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"


@pytest.mark.parametrize(
    ("values", "keys"),
    [
        (merged(AUTOSCALED, {"exporter": {"enabled": False}}), ["exporter.enabled"]),
        (merged(AUTOSCALED, {"monitoring": {"serviceMonitor": {"enabled": False}}}),
         ["monitoring.serviceMonitor.enabled", "keda.prometheus.externalScrape"]),
        # A PodMonitor scrapes the workers, not the exporter: it does not count.
        ({"workers": {"base": {"autoscaling": {"enabled": True}}},
          "monitoring": {"podMonitor": {"enabled": True}}},
         ["workers.base.autoscaling.enabled", "monitoring.serviceMonitor.enabled"]),
    ],
)
def test_autoscaling_without_a_scrape_of_the_exporter_is_refused(
    helm, values: dict[str, Any], keys: list[str]
) -> None:
    message = render_error(helm, values)
    for key in keys:
        assert key in message


def test_an_external_scrape_is_accepted_when_declared(helm) -> None:
    values = merged(AUTOSCALED, {"monitoring": {"serviceMonitor": {"enabled": False}},
                                 "keda": {"prometheus": {"externalScrape": True}}})
    objects, _ = render_objects(helm, values)
    assert len(by_kind(objects, "ScaledObject")) == 3
    assert not by_kind(objects, "ServiceMonitor")


def test_fallback_keeps_workers_when_the_metric_disappears(helm) -> None:
    values = merged(AUTOSCALED, {"workers": {"base": {"autoscaling": {"minReplicas": 2}}}})
    objects, _ = render_objects(helm, values)
    fallbacks = {so["metadata"]["labels"]["zimage-queue/model"]: so["spec"]["fallback"]
                 for so in by_kind(objects, "ScaledObject").values()}
    # Never zero (min 0 -> 1), never below the type's minimum, never below the current count.
    assert fallbacks["turbo"] == {"failureThreshold": 3, "replicas": 1,
                                  "behavior": "currentReplicasIfHigher"}
    assert fallbacks["base"]["replicas"] == 2
    for so in by_kind(objects, "ScaledObject").values():
        # KEDA's fallback needs an AverageValue metric, and no series must be an error.
        trigger = so["spec"]["triggers"][0]
        assert trigger["metricType"] == "AverageValue"
        assert trigger["metadata"]["ignoreNullValues"] == "false"
        scale_down = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"][
            "scaleDown"]
        assert scale_down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]

    objects, _ = render_objects(helm, merged(AUTOSCALED, {
        "keda": {"fallback": {"replicas": 3, "behavior": ""}}}))
    for so in by_kind(objects, "ScaledObject").values():
        assert so["spec"]["fallback"] == {"failureThreshold": 3, "replicas": 3}
    objects, _ = render_objects(helm, merged(AUTOSCALED, {"keda": {"fallback": {
        "enabled": False}}}))
    assert not any("fallback" in so["spec"] for so in by_kind(objects, "ScaledObject").values())


def test_ci_values_with_autoscaling_render_fallback(helm) -> None:
    for values_file in ("production-values.yaml", "scale-to-zero-values.yaml"):
        objects, _ = render_objects(helm, load_values(CI_VALUES / values_file))
        for so in by_kind(objects, "ScaledObject").values():
            assert so["spec"]["fallback"]["replicas"] >= max(1, so["spec"]["minReplicaCount"])


# -- cooldown: cost, not safety ---------------------------------------------------------------

def test_cooldown_defaults_to_five_minutes_and_may_be_shorter_than_a_job(helm) -> None:
    objects, _ = render_objects(helm, AUTOSCALED)
    for so in by_kind(objects, "ScaledObject").values():
        assert so["spec"]["cooldownPeriod"] == 300
    objects, _ = render_objects(helm, merged(AUTOSCALED, {
        "workerDefaults": {"autoscaling": {"cooldownS": 60}}}))
    for so in by_kind(objects, "ScaledObject").values():
        assert so["spec"]["cooldownPeriod"] == 60
        window = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"][
            "scaleDown"]["stabilizationWindowSeconds"]
        assert window == 60
    # What protects a running job is still enforced: the grace period exceeds the timeout.
    for deployment in workers(objects).values():
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > 1800
    message = render_error(helm, {"workerDefaults": {"terminationGracePeriodSeconds": 1800}})
    assert "terminationGracePeriodSeconds" in message and "config.jobTimeoutS" in message


# -- the broker: a password from a Secret -----------------------------------------------------

def _redis_password(objects: list[dict[str, Any]]) -> str:
    secret = by_kind(objects, "Secret")["zq-zimage-queue-redis"]
    return base64.b64decode(secret["data"]["redis-password"]).decode()


def test_redis_requires_a_generated_password_never_written_in_a_pod_spec(helm) -> None:
    objects, _ = render_objects(helm, {})
    password = _redis_password(objects)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", password)
    for obj in objects:
        if obj["kind"] in {"Deployment", "StatefulSet"}:
            assert password not in yaml.safe_dump(obj), obj["metadata"]["name"]
            assert base64.b64encode(password.encode()).decode() not in yaml.safe_dump(obj)
    (redis,) = by_kind(objects, "StatefulSet").values()
    pod = redis["spec"]["template"]["spec"]
    container = pod["containers"][0]
    # requirepass through a file on a memory volume; the command line names only the file.
    assert container["args"][-2:] == ["--include", "/run/redis/auth.conf"]
    assert not any("requirepass" in arg for arg in container["args"])
    (init,) = pod["initContainers"]
    assert "requirepass" in init["command"][-1]
    assert env_of(init)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "zq-zimage-queue-redis", "key": "redis-password"}
    # The probes' redis-cli authenticates from the environment.
    assert env_of(container)["REDISCLI_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == (
        "zq-zimage-queue-redis")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth"]["emptyDir"]["medium"] == "Memory"
    # Every client builds its URL from the same Secret.
    for name, deployment in by_kind(objects, "Deployment").items():
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == (
            "zq-zimage-queue-redis"), name
        assert env["ZQ_REDIS_URL"]["value"] == (
            "redis://:$(REDIS_PASSWORD)@zq-zimage-queue-redis:6379/0"), name
        names = [e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0][
            "env"]]
        # $(VAR) expands only variables defined before it.
        assert names.index("REDIS_PASSWORD") < names.index("ZQ_REDIS_URL"), name


def test_redis_password_from_an_existing_secret(helm) -> None:
    objects, _ = render_objects(helm, {"redis": {"auth": {"existingSecret": "my-redis",
                                                           "passwordKey": "pw"}}})
    assert "zq-zimage-queue-redis" not in by_kind(objects, "Secret")
    (redis,) = by_kind(objects, "StatefulSet").values()
    init = redis["spec"]["template"]["spec"]["initContainers"][0]
    assert env_of(init)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "my-redis", "key": "pw"}
    for deployment in by_kind(objects, "Deployment").values():
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
            "name": "my-redis", "key": "pw"}


def test_redis_auth_can_be_turned_off_for_a_throwaway_trial(helm) -> None:
    objects, _ = render_objects(helm, {"redis": {"auth": {"enabled": False}}})
    assert not by_kind(objects, "Secret")
    (redis,) = by_kind(objects, "StatefulSet").values()
    assert "initContainers" not in redis["spec"]["template"]["spec"]
    env = env_of(workers(objects)["turbo"]["spec"]["template"]["spec"]["containers"][0])
    assert env["ZQ_REDIS_URL"]["value"] == "redis://zq-zimage-queue-redis:6379/0"


# -- NetworkPolicies and credentials ----------------------------------------------------------

def _policies(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name.removeprefix("zq-zimage-queue-"): p["spec"]
            for name, p in by_kind(objects, "NetworkPolicy").items()}


def _egress_ports(policy: dict[str, Any]) -> set[int]:
    return {port["port"] for rule in policy.get("egress", []) for port in rule.get("ports", [])}


PROMETHEUS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}


def test_network_policies_render_by_default(helm) -> None:
    objects, _ = render_objects(helm, {"beat": {"enabled": True}})
    policies = _policies(objects)
    assert set(policies) == {"redis", "workers", "exporter", "flower", "beat"}
    for policy in policies.values():
        assert policy["policyTypes"] == ["Ingress", "Egress"]
    # Redis: only this release's pods, and it opens no connection.
    redis = policies["redis"]
    assert redis["ingress"] == [{
        "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "zimage-queue",
                                                  "app.kubernetes.io/instance": "zq"}}}],
        "ports": [{"port": 6379, "protocol": "TCP"}]}]
    assert not redis.get("egress")
    # Metrics ports (unauthenticated): Prometheus only.
    assert policies["workers"]["ingress"] == [
        {"from": [PROMETHEUS_PEER], "ports": [{"port": 9400, "protocol": "TCP"}]}]
    assert policies["exporter"]["ingress"] == [
        {"from": [PROMETHEUS_PEER], "ports": [{"port": 9401, "protocol": "TCP"}]}]
    # Flower and beat admit nobody (port-forward bypasses policies).
    assert not policies["flower"].get("ingress")
    assert not policies["beat"].get("ingress")
    # Egress: DNS and Redis for all; storage (HTTPS) only where storage is used.
    for name in ("workers", "beat"):
        assert _egress_ports(policies[name]) == {53, 6379, 443}, name
    for name in ("exporter", "flower"):
        assert _egress_ports(policies[name]) == {53, 6379}, name
    # The worker policy selects exactly the worker pods.
    selector = policies["workers"]["podSelector"]
    assert {"key": "zimage-queue/model", "operator": "Exists"} in selector["matchExpressions"]


def test_network_policy_egress_to_an_external_redis_and_storage(helm) -> None:
    values = load_values(CI_VALUES / "production-values.yaml")
    values["networkPolicy"] = {"egress": {
        "redis": {"cidrs": ["10.20.0.0/16"], "ports": [6380]},
        "storage": {"cidrs": ["10.30.0.5/32"], "ports": [443, 7480]}}}
    objects, _ = render_objects(helm, values)
    policies = _policies(objects)
    assert "redis" not in policies
    rules = policies["workers"]["egress"]
    assert {"ports": [{"port": 6380, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}]} in rules
    assert {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 7480, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "10.30.0.5/32"}}]} in rules
    objects, _ = render_objects(helm, {"networkPolicy": {"enabled": False}})
    assert not by_kind(objects, "NetworkPolicy")


@pytest.mark.parametrize("values_file", ["default-values.yaml", "production-values.yaml"])
def test_only_pods_that_use_storage_get_s3_credentials(helm, values_file: str) -> None:
    values = merged(load_values(CI_VALUES / values_file), {"beat": {"enabled": True}})
    objects, _ = render_objects(helm, values)
    for name, deployment in by_kind(objects, "Deployment").items():
        env = env_of(deployment["spec"]["template"]["spec"]["containers"][0])
        has_s3 = "AWS_SECRET_ACCESS_KEY" in env
        # The webhook dispatcher presigns the image URLs its bodies carry; the API presigns
        # and uploads inputs.
        uses_storage = "-worker-" in name or name.endswith(("-beat", "-webhooks", "-api"))
        assert has_s3 == uses_storage, name


# -- upgrades: what rolls the GPU pods ---------------------------------------------------------

def _worker_templates(helm: Any, values: dict[str, Any]) -> dict[str, str]:
    objects, _ = render_objects(helm, values)
    return {model: yaml.safe_dump(d["spec"]["template"]) for model, d in workers(objects).items()}


@pytest.mark.parametrize(
    "change",
    [
        {"config": {"exporterPort": 9501}},
        {"exporter": {"replicas": 3, "resources": {"limits": {"memory": "1Gi"}}}},
        {"flower": {"port": 5600, "basicAuthSecret": "other", "resources": {}}},
        {"flower": {"enabled": False}},
        {"beat": {"enabled": True, "intervalS": 30}},
        {"keda": {"fallback": {"failureThreshold": 5}}},
        {"monitoring": {"serviceMonitor": {"interval": "30s"}}},
        {"networkPolicy": {"prometheus": {"namespaceSelector": {}}}},
    ],
)
@pytest.mark.parametrize("values_file", ["default-values.yaml", "production-values.yaml"])
def test_a_change_workers_do_not_read_leaves_every_gpu_pod_alone(
    helm, values_file: str, change: dict[str, Any]
) -> None:
    base = load_values(CI_VALUES / values_file)
    before = _worker_templates(helm, base)
    after = _worker_templates(helm, merged(base, change))
    assert before and before == after


def test_a_change_workers_read_rolls_them(helm) -> None:
    before = _worker_templates(helm, {})
    for change in ({"config": {"leaseTtlS": 20}}, {"storage": {"url": "s3://other/x"}},
                   {"config": {"extraEnv": {"ZQ_MAX_WAIT_S": "60"}}}):
        after = _worker_templates(helm, change)
        assert all(before[m] != after[m] for m in before), change


def test_the_exporter_gets_its_port_outside_the_worker_config(helm) -> None:
    objects, _ = render_objects(helm, {"config": {"exporterPort": 9501}})
    config = by_kind(objects, "ConfigMap")["zq-zimage-queue-config"]["data"]
    assert "ZQ_EXPORTER_PORT" not in config
    exporter = by_kind(objects, "Deployment")["zq-zimage-queue-exporter"]
    container = exporter["spec"]["template"]["spec"]["containers"][0]
    assert env_of(container)["ZQ_EXPORTER_PORT"]["value"] == "9501"
    assert container["command"] == ["zq", "exporter", "--port", "9501"]


# -- alerts and notes -----------------------------------------------------------------------

def test_exporter_down_and_absent_alerts_ship_in_the_prometheus_rule(helm) -> None:
    objects, _ = render_objects(helm, {"monitoring": {"prometheusRule": {"enabled": True}}})
    (rule,) = by_kind(objects, "PrometheusRule").values()
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
    assert alerts["ZqExporterDown"]["expr"] == 'up{job="zq-exporter"} == 0'
    assert alerts["ZqExporterAbsent"]["expr"] == 'absent(up{job="zq-exporter"} == 1)'
    assert alerts["ZqExporterAbsent"]["labels"]["severity"] == "critical"


def test_notes_say_the_s3_secret_must_exist_before_the_install(helm) -> None:
    _, rendered = render_objects(helm, {})
    notes = next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))
    assert "must exist before the install" in notes
    assert "create secret" not in notes
