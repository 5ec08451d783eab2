"""GPU scheduling, the model cache, evictions and the worker lifecycle in the rendered chart."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.chart.conftest import (
    CHART,
    KUBE_VERSION,
    VALUES_FILES,
    by_kind,
    env_of,
    render,
    workers,
)

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PIN = "0123456789abcdef0123456789abcdef01234567"
PINNED = f"Tongyi-MAI/Z-Image-Turbo@{PIN}"


def _render(helm: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="zq", namespace="zq")
    return [
        doc
        for template, text in rendered.items()
        if template.endswith(".yaml")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def _refused(helm: Any, values: dict[str, Any]) -> str:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmError) as error:
        chart.render(values, name="zq", namespace="zq")
    return str(error.value)


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


def _worker(deployment: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in _pod(deployment)["containers"] if c["name"] == "worker")


def _cache_volume(deployment: dict[str, Any]) -> dict[str, Any]:
    return next(v for v in _pod(deployment)["volumes"] if v["name"] == "model-cache")


def _cache_mount(container: dict[str, Any]) -> dict[str, Any]:
    return next(m for m in container["volumeMounts"] if m["name"] == "model-cache")


def _quantity_gib(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "G": 1e9 / 2**30, "M": 1e6 / 2**30}
    for suffix, scale in units.items():
        if quantity.endswith(suffix):
            return float(quantity.removesuffix(suffix)) * scale
    return float(quantity) / 2**30


def _cpu(quantity: str) -> float:
    return float(quantity.removesuffix("m")) / 1000 if quantity.endswith("m") else float(quantity)


# GPU scheduling


def test_default_requests_fit_a_single_l4_node(helm) -> None:
    for model, deployment in workers(_render(helm, {})).items():
        resources = _worker(deployment)["resources"]
        assert _cpu(resources["requests"]["cpu"]) <= 7.5, model
        assert _quantity_gib(resources["requests"]["memory"]) <= 28, model
        assert _quantity_gib(resources["limits"]["memory"]) <= 28, model
        assert resources["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize("key", ["workerDefaults", "workers"])
def test_more_than_one_gpu_per_pod_is_refused_naming_the_key(helm, key: str) -> None:
    values = (
        {"workerDefaults": {"gpu": 2}}
        if key == "workerDefaults"
        else {"workers": {"edit": {"gpu": 4}}}
    )
    message = _refused(helm, values)
    path = "/workerDefaults/gpu" if key == "workerDefaults" else "/workers/edit/gpu"
    assert path in message and "maximum" in message


def test_a_type_tolerations_are_added_to_the_gpu_one(helm) -> None:
    own = {"key": "dedicated", "operator": "Equal", "value": "zq-base", "effect": "NoSchedule"}
    shared = {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}
    deployments = workers(
        _render(
            helm,
            {
                "workerDefaults": {"tolerations": [shared]},
                "workers": {"base": {"tolerations": [own]}},
            },
        )
    )
    assert _pod(deployments["base"])["tolerations"] == [GPU_TOLERATION, shared, own]
    assert _pod(deployments["turbo"])["tolerations"] == [GPU_TOLERATION, shared]


def test_the_gpu_toleration_is_not_repeated_and_can_be_dropped(helm) -> None:
    deployments = workers(
        _render(
            helm,
            {
                "workerDefaults": {"tolerations": [GPU_TOLERATION]},
                "workers": {"edit": {"tolerateGpuTaint": False}},
            },
        )
    )
    assert _pod(deployments["turbo"])["tolerations"] == [GPU_TOLERATION]
    assert _pod(deployments["edit"])["tolerations"] == [GPU_TOLERATION]
    deployments = workers(_render(helm, {"workers": {"edit": {"tolerateGpuTaint": False}}}))
    assert "tolerations" not in _pod(deployments["edit"])


def test_a_mig_slice_is_the_gpu_resource(helm) -> None:
    deployments = workers(
        _render(helm, {"workers": {"turbo": {"gpuResource": "nvidia.com/mig-3g.40gb"}}})
    )
    limits = _worker(deployments["turbo"])["resources"]["limits"]
    assert limits["nvidia.com/mig-3g.40gb"] == 1
    assert "nvidia.com/gpu" not in limits
    assert _worker(deployments["edit"])["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "/workers/turbo/gpuResource" in _refused(
        helm, {"workers": {"turbo": {"gpuResource": "mig 3g"}}}
    )


def test_production_runs_turbo_on_mig_slices(helm) -> None:
    objects, _ = render("production-values.yaml")
    deployments = workers(objects)
    assert _worker(deployments["turbo"])["resources"]["limits"] == {
        "memory": "26Gi",
        "nvidia.com/mig-3g.40gb": 1,
    }
    assert GPU_TOLERATION in _pod(deployments["base"])["tolerations"]
    assert len(_pod(deployments["base"])["tolerations"]) == 2


def test_scheduling_options_per_type_merge_with_the_defaults(helm) -> None:
    spread = {
        "maxSkew": 1,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
    }
    values = {
        "workerDefaults": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"},
            "priorityClassName": "zq-gpu",
            "runtimeClassName": "nvidia",
            "topologySpreadConstraints": [spread],
        },
        "workers": {
            "base": {
                "nodeSelector": {
                    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                    "cloud.google.com/gke-spot": "false",
                },
                "priorityClassName": "zq-gpu-high",
            }
        },
    }
    deployments = workers(_render(helm, values))
    turbo, base = _pod(deployments["turbo"]), _pod(deployments["base"])
    assert turbo["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert base["nodeSelector"] == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "cloud.google.com/gke-spot": "false",
    }
    assert (turbo["priorityClassName"], base["priorityClassName"]) == ("zq-gpu", "zq-gpu-high")
    assert turbo["runtimeClassName"] == base["runtimeClassName"] == "nvidia"
    (constraint,) = base["topologySpreadConstraints"]
    assert (
        constraint["labelSelector"]["matchLabels"]
        == (deployments["base"]["spec"]["selector"]["matchLabels"])
    )
    defaults = _pod(workers(_render(helm, {}))["turbo"])
    assert not {"priorityClassName", "runtimeClassName", "topologySpreadConstraints"} & set(
        defaults
    )


# The model cache


def test_default_cache_is_a_pod_local_emptydir_with_its_disk_requested(helm) -> None:
    for deployment in workers(_render(helm, {})).values():
        assert _cache_volume(deployment)["emptyDir"] == {"sizeLimit": "40Gi"}
        worker = _worker(deployment)
        assert worker["resources"]["requests"]["ephemeral-storage"] == "40Gi"
        assert not _cache_mount(worker).get("readOnly")
        env = env_of(worker)
        assert "HF_HUB_OFFLINE" not in env and "HF_TOKEN" not in env
        assert env["HF_HUB_CACHE"]["value"] == "/models/hub"
        assert "initContainers" not in _pod(deployment)


def test_read_only_pvc_cache_runs_the_worker_offline(helm) -> None:
    values = {"workerDefaults": {"modelCache": {"type": "pvc", "existingClaim": "zq-models"}}}
    for deployment in workers(_render(helm, values)).values():
        assert _cache_volume(deployment)["persistentVolumeClaim"] == {
            "claimName": "zq-models",
            "readOnly": True,
        }
        worker = _worker(deployment)
        assert _cache_mount(worker)["readOnly"] is True
        assert env_of(worker)["HF_HUB_OFFLINE"]["value"] == "1"
        assert "ephemeral-storage" not in worker["resources"]["requests"]


def test_writable_shared_pvc_lets_the_worker_download(helm) -> None:
    values = {
        "workerDefaults": {
            "modelCache": {
                "type": "pvc",
                "existingClaim": "zq-models",
                "readOnly": False,
                "hubToken": {"existingSecret": "hf"},
            }
        }
    }
    deployment = workers(_render(helm, values))["turbo"]
    assert _cache_volume(deployment)["persistentVolumeClaim"] == {"claimName": "zq-models"}
    env = env_of(_worker(deployment))
    assert "HF_HUB_OFFLINE" not in env
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "HF_TOKEN"}


def test_prefetch_downloads_the_pinned_revision_with_the_token_from_a_secret(helm) -> None:
    values = {
        "workerDefaults": {
            "modelCache": {
                "type": "hostPath",
                "hubToken": {"existingSecret": "zq-hf", "key": "token"},
                "prefetch": {"enabled": True},
            }
        },
        "workers": {
            "turbo": {"model": PINNED},
            "edit": {"model": PINNED},
            "base": {"model": f"Tongyi-MAI/Z-Image@{PIN}"},
        },
    }
    for model, deployment in workers(_render(helm, values)).items():
        pod = _pod(deployment)
        (init,) = pod["initContainers"]
        assert init["name"] == "prefetch-model"
        assert init["command"][:2] == ["python", "-c"]
        assert "snapshot_download" in init["command"][2]
        env = env_of(init)
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "zq-hf", "key": "token"}
        assert env[f"ZQ_MODEL_{model.upper()}"]["value"].endswith(f"@{PIN}")
        assert env["HF_HUB_CACHE"]["value"] == "/models/hub"
        assert "HF_HUB_OFFLINE" not in env
        assert not _cache_mount(init).get("readOnly")
        assert init["securityContext"]["readOnlyRootFilesystem"] is True
        worker_env = env_of(_worker(deployment))
        assert worker_env["HF_HUB_OFFLINE"]["value"] == "1"
        assert "HF_TOKEN" not in worker_env
        assert _cache_volume(deployment)["hostPath"] == {
            "path": "/var/lib/zimage-queue/models",
            "type": "Directory",
        }


def test_prefetch_into_an_emptydir_mounted_read_only_in_the_worker(helm) -> None:
    values = {
        "workerDefaults": {"modelCache": {"readOnly": True, "prefetch": {"enabled": True}}},
        "workers": {
            "turbo": {"model": PINNED},
            "edit": {"enabled": False},
            "base": {"enabled": False},
        },
    }
    deployment = workers(_render(helm, values))["turbo"]
    (init,) = _pod(deployment)["initContainers"]
    assert not _cache_mount(init).get("readOnly")
    assert _cache_mount(_worker(deployment))["readOnly"] is True
    assert "emptyDir" in _cache_volume(deployment)
    assert "HF_TOKEN" not in env_of(init)


def test_ephemeral_cache_is_a_volume_claim_per_pod(helm, kube_validate) -> None:
    values = {
        "workerDefaults": {
            "modelCache": {"type": "ephemeral", "storageClassName": "local-nvme", "size": "64Gi"}
        }
    }
    objects = _render(helm, values)
    deployment = workers(objects)["edit"]
    template = _cache_volume(deployment)["ephemeral"]["volumeClaimTemplate"]
    assert template["spec"]["storageClassName"] == "local-nvme"
    assert template["spec"]["resources"]["requests"]["storage"] == "64Gi"
    assert "ephemeral-storage" not in _worker(deployment)["resources"]["requests"]
    for obj in objects:
        kube_validate.validate(obj, KUBE_VERSION, strict=True)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"workerDefaults": {"modelCache": {"type": "pvc"}}},
            "workers.turbo.modelCache.existingClaim is required",
        ),
        (
            {"workerDefaults": {"modelCache": {"readOnly": True}}},
            "workers.turbo.modelCache.readOnly",
        ),
        (
            {"workerDefaults": {"modelCache": {"prefetch": {"enabled": True}}}},
            "workers.turbo.model (Tongyi-MAI/Z-Image-Turbo) must pin a commit",
        ),
        (
            {
                "workers": {
                    "edit": {
                        "model": "Tongyi-MAI/Z-Image-Turbo@main",
                        "modelCache": {"prefetch": {"enabled": True}},
                    }
                }
            },
            "workers.edit.model (Tongyi-MAI/Z-Image-Turbo@main) must pin a commit",
        ),
        (
            {
                "workers": {
                    "base": {"model": "/models/base", "modelCache": {"prefetch": {"enabled": True}}}
                }
            },
            "workers.base.modelCache.prefetch",
        ),
        (
            {
                "workerDefaults": {"requirePinnedRevision": True},
                "workers": {"turbo": {"model": PINNED}, "edit": {"model": "/models/edit"}},
            },
            "workers.base.requirePinnedRevision",
        ),
        ({"workerDefaults": {"modelCache": {"type": "nfs"}}}, "/workerDefaults/modelCache/type"),
    ],
)
def test_cache_settings_that_cannot_work_are_refused(helm, values, message: str) -> None:
    assert message in _refused(helm, values)


def test_pinned_and_local_models_pass_the_pin_check(helm) -> None:
    values = {
        "workerDefaults": {"requirePinnedRevision": True},
        "workers": {
            "turbo": {"model": PINNED},
            "edit": {"model": "/models/edit"},
            "base": {"model": f"Tongyi-MAI/Z-Image@{PIN}"},
        },
    }
    assert set(workers(_render(helm, values))) == {"turbo", "edit", "base"}


# Evictions


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_autoscalers_do_not_remove_a_node_under_a_job(helm, values_file: str) -> None:
    objects, _ = render(values_file)
    for deployment in workers(objects).values():
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
        assert annotations["karpenter.sh/do-not-disrupt"] == "true"
        assert "checksum/config" in annotations


def test_eviction_annotations_can_be_turned_off_or_overridden(helm) -> None:
    values = {
        "workers": {
            "turbo": {"doNotDisrupt": False},
            "edit": {"podAnnotations": {"karpenter.sh/do-not-disrupt": "false"}},
        }
    }
    deployments = workers(_render(helm, values))
    turbo = deployments["turbo"]["spec"]["template"]["metadata"]["annotations"]
    assert not {
        "cluster-autoscaler.kubernetes.io/safe-to-evict",
        "karpenter.sh/do-not-disrupt",
    } & set(turbo)
    edit = deployments["edit"]["spec"]["template"]["metadata"]["annotations"]
    assert edit["karpenter.sh/do-not-disrupt"] == "false"


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_pdbs_never_block_a_drain(helm, values_file: str) -> None:
    objects, _ = render(values_file)
    pdbs = by_kind(objects, "PodDisruptionBudget")
    for deployment in workers(objects).values():
        pdb = pdbs[deployment["metadata"]["name"]]
        assert "minAvailable" not in pdb["spec"]
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_pdb_max_unavailable_is_configurable(helm) -> None:
    objects = _render(helm, {"podDisruptionBudget": {"maxUnavailable": "100%"}})
    pdbs = by_kind(objects, "PodDisruptionBudget")
    for deployment in workers(objects).values():
        assert pdbs[deployment["metadata"]["name"]]["spec"]["maxUnavailable"] == "100%"
    assert "/podDisruptionBudget/maxUnavailable" in _refused(
        helm, {"podDisruptionBudget": {"maxUnavailable": 0}}
    )


# Lifecycle


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_startup_probe_covers_the_load_and_the_rollout_deadline_covers_drain_and_load(
    helm, values_file: str
) -> None:
    objects, _ = render(values_file)
    for model, deployment in workers(objects).items():
        worker = _worker(deployment)
        startup = worker["startupProbe"]
        assert startup["exec"]["command"] == ["zq", "health", "--model", model, "--ready"]
        budget = startup["periodSeconds"] * startup["failureThreshold"]
        assert budget >= 1800
        grace = _pod(deployment)["terminationGracePeriodSeconds"]
        assert deployment["spec"]["progressDeadlineSeconds"] > grace + budget
        assert worker["livenessProbe"]["exec"]["command"] == ["zq", "health", "--model", model]


def test_startup_budget_and_progress_deadline_are_configurable(helm) -> None:
    values = {
        "workerDefaults": {
            "startupProbe": {"periodSeconds": 20, "failureThreshold": 180},
            "progressDeadlineSeconds": 7000,
        }
    }
    deployment = workers(_render(helm, values))["base"]
    assert _worker(deployment)["startupProbe"]["failureThreshold"] == 180
    assert deployment["spec"]["progressDeadlineSeconds"] == 7000
    message = _refused(helm, {"workers": {"base": {"progressDeadlineSeconds": 3000}}})
    assert "workers.base.progressDeadlineSeconds (3000) must exceed" in message


def test_stall_timeout_reaches_the_worker_below_the_job_timeout(helm) -> None:
    env = env_of(_worker(workers(_render(helm, {}))["turbo"]))
    assert env["ZQ_STALL_TIMEOUT_S"]["value"] == "600"
    short = {"config": {"jobTimeoutS": 600}}
    env = env_of(_worker(workers(_render(helm, short))["turbo"]))
    assert env["ZQ_STALL_TIMEOUT_S"]["value"] == "300"
    off = {"workers": {"edit": {"stallTimeoutSeconds": 0}}}
    env = env_of(_worker(workers(_render(helm, off))["edit"]))
    assert env["ZQ_STALL_TIMEOUT_S"]["value"] == "0"
    message = _refused(helm, {"workers": {"edit": {"stallTimeoutSeconds": 1800}}})
    assert "workers.edit.stallTimeoutSeconds (1800) must be below config.jobTimeoutS (1800)" in (
        message
    )
