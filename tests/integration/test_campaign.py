"""Scheduled ad-variant campaigns through real workers and storage."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from common.job import ModelType
from producer.batch import Batches
from producer.campaign import load_campaign
from producer.campaign_run import current_period, run_batch_id, summary_key
from producer.client import Client
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration
PERIOD = "2026-11-23T09:00Z"


def write_campaign(folder: Path, schedule: str = "0 9 * * mon") -> Path:
    Image.new("RGB", (32, 32), "white").save(folder / "bottle.png")
    path = folder / "spring.yaml"
    path.write_text(f"""
name: spring-sale
schedule: "{schedule}"
defaults: {{steps: 2}}
products:
  - {{sku: A1, prompt: a glass perfume bottle}}
  - {{sku: B2, image: bottle.png, prompt: the bottle}}
axes:
  backgrounds: [white marble, a sandy beach, a neon street]
  sizes: ["32x32", "48x32"]
""")
    return path


def zq(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "zq", *args], capture_output=True, text=True,
                          env={**os.environ, **cluster.env}, timeout=300)


def images_under(client: Client, prefix: str) -> list[str]:
    store = client.store
    listing = store.client.list_objects_v2(  # type: ignore[attr-defined]
        Bucket=store.bucket, Prefix=store._key(prefix))  # type: ignore[attr-defined]
    return [o["Key"] for o in listing.get("Contents", []) if "/image." in o["Key"]]


def test_running_a_period_twice_makes_each_variant_once(cluster: Cluster, client: Client,
                                                         tmp_path: Path) -> None:
    path = write_campaign(tmp_path)
    turbo, edit = cluster.start_many(ModelType.TURBO, ModelType.EDIT)
    for _ in range(2):
        ran = zq(cluster, "campaign", "run", str(path), "--period", PERIOD, "--wait")
        assert ran.returncode == 0, ran.stderr
        assert "12 variants" in ran.stderr
    prefix = "conversations/campaign-spring-sale-2026-11-23T0900Z/"
    assert len(images_under(client, prefix)) == 12
    done = int(cluster.record(turbo)["jobs_done"]) + int(cluster.record(edit)["jobs_done"])
    assert done == 12
    campaign = load_campaign(path)
    summary = json.loads(client.store.get(summary_key(campaign, PERIOD)))
    assert summary["counts"] == {"succeeded": 12}
    assert len({v["job_id"] for v in summary["variants"]}) == 12
    sizes = {(client.status(v["job_id"]).width, client.status(v["job_id"]).height)
             for v in summary["variants"]}
    assert sizes == {(32, 32), (48, 32)}


def test_beat_runs_the_current_period_and_summarises_it(cluster: Cluster, client: Client,
                                                        tmp_path: Path) -> None:
    folder = tmp_path / "campaigns"
    folder.mkdir()
    campaign = load_campaign(write_campaign(folder, schedule="* * * * *"))
    cluster.start_many(ModelType.TURBO, ModelType.EDIT)
    period = current_period(campaign)
    beat = zq(cluster, "beat", "--campaigns", str(folder), "--once")
    assert beat.returncode == 0, beat.stderr
    started = [line for line in beat.stdout.splitlines() if line.startswith("started ")]
    batch_id = started[0].split()[1] if started else ""
    if batch_id != run_batch_id(campaign, period):  # the minute turned in between
        period = current_period(campaign)
        assert batch_id == run_batch_id(campaign, period), beat.stdout
    batches = Batches(client)
    deadline = time.monotonic() + 120
    while batches.store(batch_id).finished_at(batch_id) is None:
        assert time.monotonic() < deadline, batches.counts(batch_id)
        time.sleep(0.2)
    again = zq(cluster, "beat", "--campaigns", str(folder), "--once")
    assert again.returncode == 0, again.stderr
    summary = json.loads(client.store.get(summary_key(campaign, period)))
    assert summary["counts"] == {"succeeded": 12}
    assert summary["period"] == period


def test_a_zoned_campaign_renders_the_same_or_fresh_images_each_period(
        cluster: Cluster, client: Client, tmp_path: Path) -> None:
    cluster.start(ModelType.TURBO)
    # Mondays 09:00 in Paris: 08:00Z in November.
    periods = ("2026-11-23T08:00Z", "2026-11-30T08:00Z")
    rendered: dict[tuple[str, str], tuple[int, bytes]] = {}
    for renders in ("same", "fresh"):
        path = tmp_path / f"{renders}.yaml"
        path.write_text(f"""
name: {renders}-sale
schedule: "0 9 * * mon"
timezone: Europe/Paris
renders: {renders}
defaults: {{steps: 2}}
products:
  - {{sku: A1, prompt: a glass perfume bottle}}
axes:
  sizes: ["32x32"]
""")
        campaign = load_campaign(path)
        for period in periods:
            ran = zq(cluster, "campaign", "run", str(path), "--period", period, "--wait")
            assert ran.returncode == 0, ran.stderr
            assert "1 variants" in ran.stderr and "note:" not in ran.stderr
            summary = json.loads(client.store.get(summary_key(campaign, period)))
            [variant] = summary["variants"]
            record = client.status(variant["job_id"])
            with Image.open(io.BytesIO(client.store.get(str(record.image)))) as image:
                rendered[renders, period] = (record.spec.seed, image.tobytes())
    first, second = periods
    assert rendered["same", first] == rendered["same", second]
    assert rendered["fresh", first][0] != rendered["fresh", second][0]
    assert rendered["fresh", first][1] != rendered["fresh", second][1]
    # 09:00 typed as if it were UTC: run (an extra period), with a note saying so.
    ran = zq(cluster, "campaign", "run", str(tmp_path / "fresh.yaml"), "--period",
             "2026-11-23T09:00Z")
    assert ran.returncode == 0, ran.stderr
    assert "note: 2026-11-23T09:00Z is not a tick" in ran.stderr


def test_a_bad_product_image_is_a_row_error_and_the_run_still_seals(
        cluster: Cluster, client: Client, tmp_path: Path) -> None:
    Image.new("RGB", (32, 32), "white").save(tmp_path / "good.png")
    # A 12000x12000 bomb: small on disk, 144 megapixels once decoded.
    Image.new("L", (12000, 12000)).save(tmp_path / "bomb.png", optimize=True)
    path = tmp_path / "bad.yaml"
    path.write_text("""
name: bad-rows
schedule: "0 9 * * mon"
defaults: {steps: 2}
products:
  - {sku: OK, image: good.png, prompt: the bottle}
  - {sku: BOMB, image: bomb.png, prompt: the bottle}
  - {sku: GONE, image: uploads/never-stored.png, prompt: the bottle}
axes:
  sizes: ["32x32"]
""")
    campaign = load_campaign(path)
    batch_id = run_batch_id(campaign, PERIOD)
    ran = zq(cluster, "campaign", "run", str(path), "--period", PERIOD)
    assert ran.returncode == 0, ran.stderr
    rows = client.jobs.batches.rows(batch_id)
    assert [(row.sku, row.job_id is not None) for row in rows] == [
        ("sku=OK/size=32x32", True), ("sku=BOMB/size=32x32", False),
        ("sku=GONE/size=32x32", False)]
    assert "pixels" in (rows[1].error or "") and "image" in (rows[2].error or "")
    assert client.jobs.batches.finished_at(batch_id) is None  # sealed, its one job pending
    cluster.start(ModelType.EDIT)
    deadline = time.monotonic() + 120
    while client.jobs.batches.finished_at(batch_id) is None:
        assert time.monotonic() < deadline, "the run never finished: it was not sealed"
        time.sleep(0.2)
    assert not images_under(client, "uploads/")  # the refused bomb was never stored
