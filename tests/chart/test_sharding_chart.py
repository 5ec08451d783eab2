"""A sharded fleet: several independent Redis, one worker Deployment per model type and shard.

`redis.shards` (in-chart Redis) or `externalRedis.shardUrlKeys` (an external one) set the
shard count. Each shard's workers (and Flower) get that shard's ZQ_REDIS_URL only; the api,
exporter, webhooks and beat get ZQ_REDIS_SHARDS, every shard in routing order. One shard
renders exactly what the chart rendered before sharding existed.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from tests.chart.conftest import CHART, KUBE_VERSION, by_kind, env_of, render_values
from tests.chart.test_keda_models import KEDA, validate
from tests.conftest import require

FULL = "zq-zimage-queue"
MODELS = ("turbo", "edit", "base")
HEADLESS = f"{FULL}-redis-headless"
# Every Redis-reading component on, and KEDA for every worker type.
EVERYTHING = {
    "api": {"enabled": True, "keys": {"existingSecret": "zq-api-keys"}},
    "webhooks": {"enabled": True, "secret": {"existingSecret": "zq-webhook-secret"}},
    "beat": {"enabled": True},
    "workerDefaults": {"autoscaling": {"enabled": True}},
    "monitoring": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}},
}
IN_CHART = {**EVERYTHING, "redis": {"shards": 2}}
EXTERNAL = {
    **EVERYTHING,
    "redis": {"enabled": False},
    "externalRedis": {"existingSecret": "zq-redis", "shardUrlKeys": ["url-a", "url-b"]},
}
# The components that read every shard.
ALL_SHARDS = ("api", "exporter", "webhooks", "beat")


def shard_url(index: int) -> str:
    return f"redis://:$(REDIS_PASSWORD)@{FULL}-redis-{index}.{HEADLESS}:6379/0"


def container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]


def sharded_workers(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Worker Deployments by (model type, shard)."""
    return {
        (labels["zimage-queue/model"], labels["zimage-queue/shard"]): o
        for o in by_kind(objects, "Deployment").values()
        if "zimage-queue/model" in (labels := o["metadata"]["labels"])
    }


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def names(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(o["kind"], o["metadata"]["name"]) for o in objects}


def without_secrets(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects but the generated Redis Secret, whose random password differs per render."""
    return [o for o in objects if o["kind"] != "Secret"]


# One shard: nothing changes


@pytest.mark.parametrize("values", [{}, EVERYTHING])
def test_one_shard_renders_what_an_unsharded_chart_renders(helm, values: dict[str, Any]) -> None:
    today = render_values(helm, values)
    one = render_values(helm, {**values, "redis": {"shards": 1}})
    assert without_secrets(one) == without_secrets(today)
    workers = {f"{FULL}-worker-{model}" for model in MODELS}
    assert {("Deployment", n) for n in workers} <= names(one)
    assert {("PodDisruptionBudget", n) for n in workers} <= names(one)
    assert ("Deployment", f"{FULL}-flower") in names(one)
    assert ("Service", f"{FULL}-redis") in names(one)
    assert not any(n.endswith(("-0", "-1", "-headless")) for _, n in names(one))
    text = repr(one)
    assert "ZQ_REDIS_SHARDS" not in text and "zimage-queue/shard" not in text
    (redis,) = by_kind(one, "StatefulSet").values()
    assert (redis["spec"]["replicas"], redis["spec"]["serviceName"]) == (1, f"{FULL}-redis")
    assert "podManagementPolicy" not in redis["spec"]


def test_one_external_shard_key_is_the_url_key(helm) -> None:
    def external(**keys: Any) -> list[dict[str, Any]]:
        return render_values(helm, {"redis": {"enabled": False},
                                    "externalRedis": {"existingSecret": "zq-redis", **keys}})

    by_list = external(shardUrlKeys=["only"])
    assert by_list == external(urlKey="only")
    assert "ZQ_REDIS_SHARDS" not in repr(by_list)


# In-chart Redis, two shards


@pytest.fixture(scope="module")
def in_chart(helm) -> list[dict[str, Any]]:
    return render_values(helm, IN_CHART)


def test_redis_runs_one_independent_pod_per_shard(in_chart) -> None:
    (redis,) = by_kind(in_chart, "StatefulSet").values()
    assert redis["spec"]["replicas"] == 2
    assert redis["spec"]["serviceName"] == HEADLESS
    assert redis["spec"]["podManagementPolicy"] == "Parallel"
    # Independent Redis: no replicaof anywhere.
    assert "replicaof" not in repr(redis).lower() and "slaveof" not in repr(redis).lower()
    services = by_kind(in_chart, "Service")
    headless = services[HEADLESS]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == redis["spec"]["selector"]["matchLabels"]
    # The shared name reaches shard 0 only, never a mix of shards.
    shared = services[f"{FULL}-redis"]["spec"]["selector"]
    assert shared["statefulset.kubernetes.io/pod-name"] == f"{FULL}-redis-0"


def test_each_model_type_runs_one_deployment_per_shard(in_chart) -> None:
    deployments = sharded_workers(in_chart)
    assert set(deployments) == {(m, s) for m in MODELS for s in ("0", "1")}
    for (model, shard), deployment in deployments.items():
        assert deployment["metadata"]["name"] == f"{FULL}-worker-{model}-{shard}"
        assert pod_labels(deployment)["zimage-queue/shard"] == shard
        env = env_of(container(deployment))
        assert env["ZQ_REDIS_URL"]["value"] == shard_url(int(shard))
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == f"{FULL}-redis"
        # A worker serves one shard: it is never told about the others.
        assert "ZQ_REDIS_SHARDS" not in env
    for model in MODELS:
        urls = {env_of(container(deployments[model, s]))["ZQ_REDIS_URL"]["value"]
                for s in ("0", "1")}
        assert len(urls) == 2


def test_shard_deployments_never_select_each_others_pods(in_chart) -> None:
    deployments = list(sharded_workers(in_chart).values())
    for a in deployments:
        selector = a["spec"]["selector"]["matchLabels"]
        assert matches(selector, pod_labels(a))
        for b in deployments:
            if b is not a:
                assert not matches(selector, pod_labels(b)), (a["metadata"]["name"],
                                                                b["metadata"]["name"])


def test_each_shard_has_its_own_budget(in_chart) -> None:
    pdbs = by_kind(in_chart, "PodDisruptionBudget")
    for deployment in sharded_workers(in_chart).values():
        pdb = pdbs[deployment["metadata"]["name"]]
        selected = [d["metadata"]["name"] for d in sharded_workers(in_chart).values()
                    if matches(pdb["spec"]["selector"]["matchLabels"], pod_labels(d))]
        assert selected == [deployment["metadata"]["name"]]
        assert pdb["spec"]["maxUnavailable"] == 1


def test_each_shard_scales_on_its_own_shard_queue_load(in_chart) -> None:
    deployments = sharded_workers(in_chart)
    scaled = by_kind(in_chart, "ScaledObject")
    assert len(scaled) == len(deployments)
    for (model, shard), deployment in deployments.items():
        so = scaled[deployment["metadata"]["name"]]
        assert so["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
        assert so["metadata"]["labels"]["zimage-queue/shard"] == shard
        (trigger,) = so["spec"]["triggers"]
        assert trigger["metadata"]["query"] == (
            f'max(zq_shard_queue_load{{model="{model}", shard="{shard}", '
            'namespace="zq", zq_release="zq"})'
        )
        assert trigger["metadata"]["ignoreNullValues"] == "false"


@pytest.mark.parametrize("component", ALL_SHARDS)
def test_components_that_read_every_shard_get_them_all_in_order(
        in_chart, component: str) -> None:
    deployment = by_kind(in_chart, "Deployment")[f"{FULL}-{component}"]
    env = env_of(container(deployment))
    assert env["ZQ_REDIS_SHARDS"]["value"] == f"{shard_url(0)},{shard_url(1)}"
    assert env["ZQ_REDIS_URL"]["value"] == shard_url(0)
    # $(REDIS_PASSWORD) expands only from a variable defined earlier.
    order = [e["name"] for e in container(deployment)["env"]]
    assert order.index("REDIS_PASSWORD") < order.index("ZQ_REDIS_URL")


def test_one_flower_per_shard(in_chart) -> None:
    deployments = by_kind(in_chart, "Deployment")
    services = by_kind(in_chart, "Service")
    assert f"{FULL}-flower" not in deployments
    for shard in (0, 1):
        flower = deployments[f"{FULL}-flower-{shard}"]
        env = env_of(container(flower))
        assert env["ZQ_REDIS_URL"]["value"] == shard_url(shard)
        assert "ZQ_REDIS_SHARDS" not in env
        selector = services[f"{FULL}-flower-{shard}"]["spec"]["selector"]
        assert matches(selector, pod_labels(flower))
        other = deployments[f"{FULL}-flower-{1 - shard}"]
        assert not matches(selector, pod_labels(other))


def test_worker_metrics_carry_the_shard(in_chart) -> None:
    monitor = by_kind(in_chart, "PodMonitor")[f"{FULL}-workers"]
    relabelings = monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_zimage_queue_shard"],
            "targetLabel": "shard"} in relabelings


def test_sharded_chart_lints_and_is_valid_kubernetes(helm, kube_validate, in_chart) -> None:
    for values in (IN_CHART, EXTERNAL):
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
        assert not report["errors"], report["errors"]
        assert not [m for m in report["messages"] if m["severity"] >= 2]
    for obj in [*in_chart, *render_values(helm, EXTERNAL)]:
        if obj["kind"] in {"ScaledObject", "PodMonitor", "ServiceMonitor", "PrometheusRule"}:
            continue
        try:
            kube_validate.validate(obj, KUBE_VERSION, strict=True)
        except kube_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc}")


def test_notes_tell_the_shard_count(helm) -> None:
    path = "zimage-queue/templates/NOTES.txt"
    with helm.Chart.load(CHART) as chart:
        notes = chart.render(IN_CHART, name="zq", namespace="zq")[path]
        unsharded = chart.render({}, name="zq", namespace="zq")[path]
    assert "Shards: 2 independent Redis" in notes
    assert f"{FULL}-redis-1.{HEADLESS}:6379" in notes
    assert f"deploy/{FULL}-worker-turbo-0 " in notes
    assert "Shards:" not in unsharded


# External Redis, one Secret key per shard


def test_external_shards_come_from_one_secret_key_each(helm) -> None:
    objects = render_values(helm, EXTERNAL)
    assert not by_kind(objects, "StatefulSet")
    deployments = sharded_workers(objects)
    assert set(deployments) == {(m, s) for m in MODELS for s in ("0", "1")}
    for (_, shard), deployment in deployments.items():
        env = env_of(container(deployment))
        assert env["ZQ_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "zq-redis", "key": ("url-a", "url-b")[int(shard)]}
        assert "ZQ_REDIS_SHARDS" not in env
    for component in ALL_SHARDS:
        ordered = container(by_kind(objects, "Deployment")[f"{FULL}-{component}"])["env"]
        env = {e["name"]: e for e in ordered}
        assert env["REDIS_SHARD_0_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "zq-redis", "key": "url-a"}
        assert env["REDIS_SHARD_1_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "zq-redis", "key": "url-b"}
        assert env["ZQ_REDIS_SHARDS"]["value"] == "$(REDIS_SHARD_0_URL),$(REDIS_SHARD_1_URL)"
        assert env["ZQ_REDIS_URL"]["value"] == "$(REDIS_SHARD_0_URL)"
        # Kubernetes expands $(VAR) only from variables defined before.
        order = [e["name"] for e in ordered]
        assert order.index("REDIS_SHARD_1_URL") < order.index("ZQ_REDIS_SHARDS")
    flower = by_kind(objects, "Deployment")[f"{FULL}-flower-1"]
    assert env_of(container(flower))["ZQ_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "url-b"


def test_in_chart_shard_count_with_an_external_redis_is_refused(helm) -> None:
    values = {"redis": {"enabled": False, "shards": 2},
              "externalRedis": {"existingSecret": "zq-redis"}}
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmRenderError) as error:
        chart.render(values, name="zq", namespace="zq")
    assert "externalRedis.shardUrlKeys" in str(error.value)


# Schema


@pytest.mark.parametrize(("values", "expected"), [
    ({"redis": {"shards": 0}}, ["/redis/shards", "minimum"]),
    ({"redis": {"shards": 65}}, ["/redis/shards", "maximum"]),
    ({"redis": {"shards": "2"}}, ["/redis/shards"]),
    ({"externalRedis": {"shardUrlKeys": ["a", "a"]}}, ["/externalRedis/shardUrlKeys"]),
    ({"externalRedis": {"shardUrlKeys": [f"k{i}" for i in range(65)]}},
     ["/externalRedis/shardUrlKeys"]),
])
def test_schema_refuses_a_bad_shard_count(helm, values: dict[str, Any],
                                          expected: list[str]) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as error:
        chart.validate_schema(values)
    for text in expected:
        assert text in str(error.value)


def test_schema_accepts_64_shards(helm) -> None:
    objects = render_values(helm, {"redis": {"shards": 64}, "flower": {"enabled": False}})
    assert len(sharded_workers(objects)) == 64 * len(MODELS)
    (redis,) = by_kind(objects, "StatefulSet").values()
    assert redis["spec"]["replicas"] == 64


# KEDA's own models


def test_sharded_scaled_objects_are_valid_keda(in_chart) -> None:
    node = shutil.which("node")
    require(node is not None and (KEDA / "node_modules" / "@kubernetes-models").is_dir(),
            "node and the KEDA models (npm ci --prefix tests/chart/keda)")
    assert node is not None
    scaled = list(by_kind(in_chart, "ScaledObject").values())
    done = validate(node, scaled)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count(": valid") == len(scaled) == 2 * len(MODELS)
