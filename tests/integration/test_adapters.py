"""Brand LoRA adapters end to end: registered with the CLI in real S3, applied by a real
worker through diffusers' LoRA API, never leaking into the next job, replayable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from common.errors import InvalidJob
from common.job import ModelType
from common.status import JobStatus
from producer.api.app import create_app
from producer.api.auth import ApiKeys
from producer.batch import Batches
from producer.client import Client
from producer.replay import replay
from tests.integration.cluster import Cluster
from worker.tiny_lora import make_tiny_lora

pytestmark = pytest.mark.integration
SIDE = 32


def zq(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zq", *args], env={**os.environ, **cluster.env},
                          capture_output=True, text=True, timeout=120)


def metric(cluster: Cluster, worker_name: str, name: str) -> float:
    """One sample of the worker's /metrics (model label turbo)."""
    port = cluster.record(next(w for w in cluster.workers if w.name == worker_name))[
        "metrics_port"]
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="turbo"}}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported:\n{text[:2000]}")


def test_brand_adapters_change_the_image_and_never_leak(cluster: Cluster, client: Client,
                                                        tiny_models: dict[str, Path],
                                                        tmp_path: Path) -> None:
    files = {name: make_tiny_lora(tiny_models["turbo"], tmp_path / f"{name}.safetensors", seed)
             for name, seed in (("acme", 1), ("globex", 2))}
    for name, file in files.items():
        added = zq(cluster, "adapters", "add", name, str(file), "--model", "turbo", "--json")
        assert added.returncode == 0, added.stderr
    base_only = zq(cluster, "adapters", "add", "hd-look",
                   str(make_tiny_lora(tiny_models["base"], tmp_path / "hd.safetensors", 3)),
                   "--model", "base")
    assert base_only.returncode == 0, base_only.stderr
    listed = json.loads(zq(cluster, "adapters", "list", "--json").stdout)
    assert sorted(record["name"] for record in listed) == ["acme", "globex", "hd-look"]
    acme_sha = next(r["sha256"] for r in listed if r["name"] == "acme")

    # Refused at the door: another model type's adapter, an unknown one, a bad file or name.
    with pytest.raises(InvalidJob, match="adapter hd-look is for base, not turbo"):
        client.generate("p", width=SIDE, height=SIDE, adapters="hd-look")
    with pytest.raises(InvalidJob, match="a registered adapter"):
        client.generate("p", width=SIDE, height=SIDE, adapters="initech")
    not_lora = tmp_path / "photo.safetensors"
    not_lora.write_bytes(b"\x89PNG not a lora")
    for args in (("adapters", "add", "broken", str(not_lora), "--model", "turbo"),
                 ("adapters", "add", "bad.name", str(files["acme"]), "--model", "turbo"),
                 ("generate", "p", "--adapter", "acme:7")):
        refused = zq(cluster, *args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert "Traceback" not in refused.stderr

    worker = cluster.start(ModelType.TURBO, name="turbo-lora@test")

    def render(adapters: str | None) -> bytes:
        handle = client.generate("a storefront at night", width=SIDE, height=SIDE, steps=2,
                                 seed=5, adapters=adapters)
        record = handle.wait(120)
        assert record.status is JobStatus.SUCCEEDED, record.error
        return client.result(handle.job_id)

    plain = render(None)  # the first job on a fresh worker
    acme = render("acme")
    acme_off = render("acme:0")
    globex = render("globex")
    plain_after = render(None)
    acme_again = render("acme")
    blend = render("acme:0.5 globex:0.5")
    assert acme != plain and globex != plain and globex != acme
    assert acme_off == plain  # weight 0 is no adapter
    assert plain_after == plain  # no brand leaks into the next job
    assert acme_again == acme
    assert blend not in (plain, acme, globex)
    # Each file was loaded once; every later use found it resident.
    assert metric(cluster, worker.name, "zq_adapter_loads_total") == 2
    assert metric(cluster, worker.name, "zq_adapter_hits_total") >= 3
    assert metric(cluster, worker.name, "zq_adapters_resident") == 2

    # The manifest pins the file; a replay renders the very same image.
    job = client.generate("a storefront at night", width=SIDE, height=SIDE, steps=2, seed=5,
                          adapters=[{"name": "acme", "weight": 1.0}])
    assert job.wait(120).status is JobStatus.SUCCEEDED
    assert client.manifest(job.job_id)["spec"]["adapters"] == [
        {"name": "acme", "weight": 1.0, "sha256": acme_sha}]
    assert replay(client, job.job_id, 120).identical

    # A catalogue names adapters per row; a bad one is that row's error, the rest go in.
    manifest = tmp_path / "catalogue.csv"
    manifest.write_text("sku,prompt,adapters\n"
                        "A-1,a shoe,acme:0.8\n"
                        "A-2,a shoe,acme:9\n"
                        "A-3,a shoe,hd-look\n"
                        "A-4,a shoe,nobody\n"
                        "A-5,a shoe,\n")
    batches = Batches(client)
    submission = batches.submit(manifest, {"width": SIDE, "height": SIDE, "steps": 2})
    assert submission.jobs == 2
    assert {error.sku: error.field for error in submission.errors} == {
        "A-2": "adapters", "A-3": "adapters", "A-4": "adapters"}
    rows = {row.sku: row for row in batches.results_light(submission.batch_id)}
    records = client.wait_all([rows["A-1"].job_id or "", rows["A-5"].job_id or ""], 120)
    assert [r.status for r in records] == [JobStatus.SUCCEEDED] * 2
    assert records[0].spec.adapters[0].sha256 == acme_sha and not records[1].spec.adapters

    # The HTTP API takes them too, and names the field when it refuses.
    with TestClient(create_app(client.settings, client, ApiKeys())) as api:
        made = api.post("/v1/jobs", json={"prompt": "p", "width": SIDE, "height": SIDE,
                                          "adapters": [{"name": "globex", "weight": 0.7}]})
        assert made.status_code == 201, made.text
        assert made.json()["adapters"] == [{"name": "globex", "weight": 0.7,
                                            "sha256": next(r["sha256"] for r in listed
                                                           if r["name"] == "globex")}]
        refused = api.post("/v1/jobs", json={"prompt": "p", "adapters": ["hd-look"]})
        assert refused.status_code in (400, 422), refused.text
        assert "adapters" in refused.text
