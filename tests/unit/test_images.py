"""The container images: what can be checked without a Docker engine.

The Dockerfiles are parsed line by line (both images run as a non-root user, the worker image
is the GPU one with the ``worker`` extra, the light one never installs it), and the light
install is checked for what it promises: no torch in its dependencies, and every command it
serves imports in an interpreter where torch, diffusers and transformers cannot be imported.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "deploy" / "docker"
WORKER = DOCKER / "worker.Dockerfile"
LIGHT = DOCKER / "light.Dockerfile"
HEAVY = {"torch", "diffusers", "transformers", "accelerate", "safetensors"}
# What the light image runs: the producer CLI, the exporter, beat, webhooks, the zq parser.
LIGHT_MODULES = ["zq.cli", "producer.cli", "producer.client", "producer.batch",
                 "producer.batch_cli", "producer.campaign_cli", "producer.webhooks",
                 "zq.exporter", "common.queueload", "producer.api.app", "producer.api.cli"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` per instruction, continuation lines joined."""
    joined: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, f"{path.name} ends inside a continued line"
    out = []
    for line in joined:
        keyword, _, rest = line.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def final_stage(path: Path) -> list[tuple[str, str]]:
    """The instructions of the last ``FROM`` stage: what the shipped image is made of."""
    steps = instructions(path)
    last = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last:]


def values(steps: list[tuple[str, str]], keyword: str) -> list[str]:
    return [rest for kw, rest in steps if kw == keyword]


def installs(path: Path) -> str:
    """Every ``RUN`` of the file, as one string."""
    return "\n".join(values(instructions(path), "RUN"))


@pytest.mark.parametrize("dockerfile", [WORKER, LIGHT], ids=lambda p: p.stem)
def test_image_runs_as_non_root_user(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    users = values(stage, "USER")
    assert users, f"{dockerfile.name}: no USER in the final stage (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    # A numeric uid, so Kubernetes' runAsNonRoot can verify it; the chart runs as 10001.
    assert user == "10001", users
    # Nothing after the last USER switches back.
    last_user = max(i for i, (kw, _) in enumerate(stage) if kw == "USER")
    assert all(kw != "USER" for kw, _ in stage[last_user + 1:])
    assert values(stage, "STOPSIGNAL") == ["SIGTERM"]
    assert values(stage, "ENTRYPOINT") == ['["zq"]']


def test_worker_image_is_the_gpu_one() -> None:
    steps = instructions(WORKER)
    run = installs(WORKER)
    assert re.search(r"pip install [^\n]*\.\[worker,gpu\]", run), run
    assert "download.pytorch.org/whl/cu" in "\n".join(rest for _, rest in steps)
    stage = final_stage(WORKER)
    base = [rest for kw, rest in steps if kw == "ARG" and rest.startswith("CUDA_IMAGE=")]
    assert base and base[0].startswith("CUDA_IMAGE=nvidia/cuda:"), base
    env = " ".join(values(stage, "ENV"))
    assert "HF_HUB_CACHE=/models" in env
    assert json.loads(values(stage, "VOLUME")[-1]) == ["/models"]
    assert json.loads(values(stage, "CMD")[-1]) == ["worker", "--model", "turbo"]
    assert "chown 10001:10001 /models" in "\n".join(values(stage, "RUN")), \
        "the non-root user must be able to write the model cache"


def test_light_image_installs_no_worker_extra() -> None:
    steps = instructions(LIGHT)
    assert values(steps, "FROM")[-1].startswith("python:3.11-slim")
    run = installs(LIGHT)
    pips = re.findall(r"pip install[^&\n]*", run)
    assert any(".[flower,api]" in pip for pip in pips), pips
    for pip in pips:
        assert "worker" not in pip and not any(name in pip for name in HEAVY), pip
    assert "nvidia" not in "\n".join(values(steps, "FROM"))


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv", "tests", "zq-demo"):
        assert entry in ignored
    copied = " ".join(values(instructions(WORKER), "COPY") + values(instructions(LIGHT), "COPY"))
    for needed in ("pyproject.toml", "common", "producer", "worker", "zq"):
        assert needed not in ignored and needed in copied


def test_base_dependencies_exclude_the_gpu_stack() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {Requirement(dep).name.lower() for dep in project["dependencies"]}
    flower = {Requirement(dep).name.lower()
              for dep in project["optional-dependencies"]["flower"]}
    worker = {Requirement(dep).name.lower()
              for dep in project["optional-dependencies"]["worker"]}
    assert not (base | flower) & HEAVY, (base | flower) & HEAVY
    assert {"torch", "diffusers", "transformers"} <= worker


# An interpreter where the GPU stack cannot be imported, as in the light image.
BLOCK_HEAVY = f"""
import importlib.abc, json, sys
HEAVY = {sorted(HEAVY)!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HEAVY:
            raise ModuleNotFoundError(f"No module named {{name!r}} (light image)", name=name)
        return None
sys.meta_path.insert(0, Block())
import importlib
for module in sys.argv[1:]:
    importlib.import_module(module)
from zq.cli import build_parser
build_parser()  # every subcommand registers without the worker stack
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)))
"""


def import_without_gpu_stack(*modules: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_HEAVY, *modules], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def test_light_commands_import_without_torch() -> None:
    done = import_without_gpu_stack(*LIGHT_MODULES)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


def test_flower_app_imports_without_torch() -> None:
    # Flower runs `celery -A worker.celery_app flower` in the light image.
    done = import_without_gpu_stack("worker.celery_app")
    assert done.returncode == 0, done.stderr[-2000:]
