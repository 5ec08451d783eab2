"""Assertions on the rendered manifests: scaling, shutdown, probes, wiring, security."""

from __future__ import annotations

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    CI_VALUES,
    REPO,
    VALUES_FILES,
    by_kind,
    env_of,
    load_values,
    render,
    rendered_templates,
    workers,
)

MODELS = ("turbo", "edit", "base")


def _job_timeout_s(values_file: str) -> int:
    values = load_values(CI_VALUES / values_file)
    return int(values.get("config", {}).get("jobTimeoutS", 1800))


def _container(deployment: dict, name: str | None = None) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def test_defaults_one_fixed_deployment_per_model(helm) -> None:
    objects, notes = render("default-values.yaml")
    deployments = workers(objects)
    assert set(deployments) == set(MODELS)
    assert not by_kind(objects, "ScaledObject")
    for deployment in deployments.values():
        assert deployment["spec"]["replicas"] == 1
    assert "turbo" in notes and "zimage-queue-s3" in notes


def test_single_model_values_render_one_worker_type(helm) -> None:
    objects, _ = render("single-model-values.yaml")
    assert set(workers(objects)) == {"turbo"}
    assert list(by_kind(objects, "PodDisruptionBudget")) == ["zq-zimage-queue-worker-turbo"]
    assert not any("flower" in name for name in by_kind(objects, "Deployment"))


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_no_replicas_when_keda_owns_the_deployment(helm, values_file: str) -> None:
    objects, _ = render(values_file)
    scaled = {
        so["spec"]["scaleTargetRef"]["name"]
        for kind in ("ScaledObject", "HorizontalPodAutoscaler")
        for so in by_kind(objects, kind).values()
    }
    for name, deployment in by_kind(objects, "Deployment").items():
        if name in scaled:
            assert "replicas" not in deployment["spec"], name
        else:
            assert isinstance(deployment["spec"]["replicas"], int), name


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_grace_period_exceeds_the_job_timeout(helm, values_file: str) -> None:
    objects, _ = render(values_file)
    timeout_s = _job_timeout_s(values_file)
    config = by_kind(objects, "ConfigMap")["zq-zimage-queue-config"]
    assert config["data"]["ZQ_JOB_TIMEOUT_S"] == str(timeout_s)
    for deployment in workers(objects).values():
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > timeout_s


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_each_scaled_object_scales_its_own_model_on_queue_load(helm, values_file: str) -> None:
    objects, _ = render(values_file)
    deployments = workers(objects)
    timeout_s = _job_timeout_s(values_file)
    for so in by_kind(objects, "ScaledObject").values():
        model = so["metadata"]["labels"]["zimage-queue/model"]
        assert so["spec"]["scaleTargetRef"]["name"] == deployments[model]["metadata"]["name"]
        (trigger,) = so["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        # Scoped to this release: another install on the same Prometheus never scales it.
        assert meta["query"] == (
            f'max(zq_queue_load{{model="{model}", namespace="zq", zq_release="zq"}})'
        )
        assert "activationThreshold" in meta
        assert meta["ignoreNullValues"] == "false"
        # The cooldown only keeps idle GPUs; running jobs are covered by the grace period.
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] == so["spec"]["cooldownPeriod"]
        assert deployments[model]["spec"]["template"]["spec"][
            "terminationGracePeriodSeconds"] > timeout_s


def test_scale_to_zero(helm) -> None:
    objects, _ = render("scale-to-zero-values.yaml")
    scaled = by_kind(objects, "ScaledObject")
    assert len(scaled) == len(MODELS)
    for so in scaled.values():
        assert so["spec"]["minReplicaCount"] == 0
        assert so["spec"]["triggers"][0]["metadata"]["activationThreshold"] == "0"
    assert by_kind(objects, "ServiceMonitor"), "KEDA reads the exporter through Prometheus"


def test_production_mixes_keda_and_a_fixed_pool(helm) -> None:
    objects, _ = render("production-values.yaml")
    scaled = by_kind(objects, "ScaledObject")
    models = {so["metadata"]["labels"]["zimage-queue/model"] for so in scaled.values()}
    assert models == {"turbo", "edit"}
    base = workers(objects)["base"]
    assert base["spec"]["replicas"] == 2
    assert base["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 3600
    # One GPU per pod (a worker is one process on one GPU): more GPUs means more replicas.
    assert _container(base)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "podAntiAffinity" in base["spec"]["template"]["spec"]["affinity"]


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_worker_pods(helm, values_file: str) -> None:
    objects, _ = render(values_file)
    for model, deployment in workers(objects).items():
        pod = deployment["spec"]["template"]["spec"]
        container = _container(deployment)
        assert container["command"][:4] == ["zq", "worker", "--model", model]
        assert container["command"][-1] == f"zq-{model}@$(POD_NAME)"
        assert container["livenessProbe"]["exec"]["command"] == ["zq", "health", "--model", model]
        assert container["readinessProbe"]["exec"]["command"] == [
            "zq",
            "health",
            "--model",
            model,
            "--ready",
        ]
        gpus = {k: v for k, v in container["resources"]["limits"].items() if "nvidia.com/" in k}
        assert list(gpus.values()) == [1], gpus
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
            "tolerations"
        ]
        env = env_of(container)
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        # Workers listen on loopback unless told otherwise: Prometheus scrapes the pod IP.
        assert env["ZQ_METRICS_ADDR"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
        assert env[f"ZQ_MODEL_{model.upper()}"]["value"]
        assert {"ZQ_REDIS_URL", "HF_HUB_CACHE"} <= set(env)
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert env["HF_HUB_CACHE"]["value"].startswith(mounts["model-cache"])
        assert mounts["health"] == "/var/run/zq-health"
        assert "emptyDir" in volumes["health"]
        assert container["ports"][0]["containerPort"] == 9400


def test_serving_options_reach_each_worker_type(helm) -> None:
    objects, _ = render("production-values.yaml")
    env = {model: {k: v.get("value") for k, v in env_of(_container(d)).items()}
           for model, d in workers(objects).items()}
    assert env["turbo"]["ZQ_ATTENTION_BACKEND"] == "_flash_3"
    assert (env["turbo"]["ZQ_COMPILE"], env["turbo"]["ZQ_FP8"]) == ("true", "true")
    assert env["turbo"]["ZQ_WARMUP_SIZE_PX"] == "1024,768x1344"
    # The other types keep the defaults: bf16 through auto, no compile, no FP8.
    for model in ("edit", "base"):
        assert env[model]["ZQ_DTYPE"] == "auto"
        assert (env[model]["ZQ_COMPILE"], env[model]["ZQ_FP8"]) == ("false", "false")
        assert env[model]["ZQ_ATTENTION_BACKEND"] == ""
        assert env[model]["ZQ_WARMUP_SIZE_PX"] == "1024"


def test_production_credentials_come_from_existing_secrets(helm) -> None:
    objects, _ = render("production-values.yaml")
    assert not by_kind(objects, "StatefulSet"), "no in-chart Redis"
    config = by_kind(objects, "ConfigMap")["zq-zimage-queue-config"]["data"]
    assert config["ZQ_STORAGE_URL"] == "s3://zq-images/prod"
    assert config["ZQ_S3_ENDPOINT_URL"] == "https://rgw.example.com"
    assert config["ZQ_HEALTH_DIR"] == "/var/run/zq-health"
    for name, deployment in by_kind(objects, "Deployment").items():
        env = env_of(_container(deployment))
        assert env["ZQ_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "zq-redis",
            "key": "url",
        }, name
        if name.endswith(("-exporter", "-flower")):
            # They never touch storage: no S3 credentials.
            assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} & set(env), name
            continue
        assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {
            "name": "zq-s3-credentials",
            "key": "access-key",
        }
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secret-key"
    rendered = "".join(text for _, text in rendered_templates("production-values.yaml"))
    assert "password" not in rendered.lower()


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_non_root_read_only_pods(helm, values_file: str) -> None:
    objects, _ = render(values_file)
    pods = [
        o["spec"]["template"]["spec"] for o in objects if o["kind"] in {"Deployment", "StatefulSet"}
    ]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]


def test_config_change_rolls_the_pods(helm) -> None:
    with helm.Chart.load(CHART) as chart:
        before = chart.render({}, name="zq", namespace="zq")
        after = chart.render({"config": {"jobTimeoutS": 600}}, name="zq", namespace="zq")

    def checksums(rendered: dict[str, str]) -> dict[str, str]:
        objects = [
            d
            for k, t in rendered.items()
            if k.endswith(".yaml")
            for d in yaml.safe_load_all(t)
            if d
        ]
        return {
            o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"][
                "checksum/config"
            ]
            for o in objects
            if o["kind"] == "Deployment"
        }

    old, new = checksums(before), checksums(after)
    assert old.keys() == new.keys()
    assert all(old[name] != new[name] for name in old)


def test_beat_runs_exactly_one_scheduler_on_the_campaigns(helm) -> None:
    objects, _ = render("production-values.yaml")
    beat = by_kind(objects, "Deployment")["zq-zimage-queue-beat"]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"]["type"] == "Recreate"
    container = _container(beat)
    assert container["command"][:4] == ["zq", "beat", "--campaigns", "/campaigns"]
    campaigns = by_kind(objects, "ConfigMap")["zq-zimage-queue-campaigns"]
    spring = yaml.safe_load(campaigns["data"]["spring.yaml"])
    assert spring["name"] == "spring-sale"
    volumes = {v["name"]: v for v in beat["spec"]["template"]["spec"]["volumes"]}
    assert volumes["campaigns"]["configMap"]["name"] == "zq-zimage-queue-campaigns"
    assert "checksum/campaigns" in beat["spec"]["template"]["metadata"]["annotations"]


def test_flower_requires_basic_auth(helm) -> None:
    objects, _ = render("default-values.yaml")
    flower = by_kind(objects, "Deployment")["zq-zimage-queue-flower"]
    env = env_of(_container(flower))
    assert env["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == "zimage-queue-flower"
    assert "--basic-auth" not in " ".join(_container(flower)["command"])


def test_exporter_serves_queue_load(helm) -> None:
    objects, _ = render("default-values.yaml")
    exporter = by_kind(objects, "Deployment")["zq-zimage-queue-exporter"]
    assert _container(exporter)["command"] == ["zq", "exporter", "--port", "9401"]
    env = env_of(_container(exporter))
    # Its probes and Prometheus reach it on the pod IP, not loopback (the default).
    assert env["ZQ_EXPORTER_ADDR"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    service = by_kind(objects, "Service")["zq-zimage-queue-exporter"]
    assert service["spec"]["ports"][0]["port"] == 9401


def test_trial_redis_is_official_and_persistent(helm) -> None:
    objects, _ = render("default-values.yaml")
    (redis,) = by_kind(objects, "StatefulSet").values()
    container = _container(redis)
    assert container["image"].startswith("redis:")
    assert container["args"][:3] == ["redis-server", "--appendonly", "yes"]
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    env = env_of(_container(workers(objects)["turbo"]))
    assert env["ZQ_REDIS_URL"]["value"] == (
        "redis://:$(REDIS_PASSWORD)@zq-zimage-queue-redis:6379/0"
    )
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "zq-zimage-queue-redis"


def test_prometheus_operator_objects(helm) -> None:
    objects, _ = render("production-values.yaml")
    pod_monitor = by_kind(objects, "PodMonitor")["zq-zimage-queue-workers"]  # and the API's
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics"
    assert {"targetLabel": "job", "replacement": "zq-worker"} in endpoint["relabelings"]
    (service_monitor,) = by_kind(objects, "ServiceMonitor").values()
    assert {"targetLabel": "job", "replacement": "zq-exporter"} in service_monitor["spec"][
        "endpoints"
    ][0]["relabelings"]
    (rule,) = by_kind(objects, "PrometheusRule").values()
    alerts = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    assert rule["spec"] == alerts
    assert "{{ $labels.model }}" in yaml.safe_dump(rule["spec"])


def test_chart_alert_rules_match_the_repository_rules() -> None:
    chart_copy = CHART / "files" / "alerts.yml"
    assert chart_copy.read_text() == (REPO / "deploy" / "prometheus" / "alerts.yml").read_text(), (
        "copy deploy/prometheus/alerts.yml to deploy/helm/zimage-queue/files/alerts.yml"
    )


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_one_pdb_per_worker_type(helm, values_file: str) -> None:
    objects, _ = render(values_file)
    pdbs = by_kind(objects, "PodDisruptionBudget")
    for deployment in workers(objects).values():
        assert pdbs[deployment["metadata"]["name"]]["spec"]["maxUnavailable"] == 1


def test_gpu_workers_use_the_worker_image_the_rest_the_light_one(helm) -> None:
    objects, _ = render("production-values.yaml")
    deployments = by_kind(objects, "Deployment")
    for name, deployment in deployments.items():
        image = _container(deployment)["image"]
        if "-worker-" in name:
            assert image.startswith("registry.example.com/ml/zimage-queue:"), (name, image)
        elif "redis" not in name:
            assert image.startswith("registry.example.com/ml/zimage-queue-light:"), (name, image)
