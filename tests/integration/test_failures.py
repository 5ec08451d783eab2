"""Branches, failing parents, bad inputs: every failure is explained, no worker dies of one."""

from __future__ import annotations

import time

import pytest

from common.errors import JobNotFound
from common.job import JobKind, ModelType, new_job
from common.status import JobStatus
from producer.client import Client
from tests.integration.cluster import Cluster

pytestmark = pytest.mark.integration
SIDE = 32


def test_two_branches_from_one_parent_both_complete(cluster: Cluster, client: Client) -> None:
    cluster.start_many(ModelType.TURBO, ModelType.EDIT)
    parent = client.generate("a harbour at dawn", width=SIDE, height=SIDE, seed=1)
    left = client.edit("add a lighthouse", parent=parent.job_id, seed=2)
    right = client.edit("add a sailing ship", parent=parent.job_id, seed=2)
    records = [h.wait(60) for h in (parent, left, right)]
    assert [r.status for r in records] == [JobStatus.SUCCEEDED] * 3
    conversations = {h.status().spec.conversation_id for h in (left, right)}
    assert conversations == {parent.job_id}
    assert client.result(left.job_id) != client.result(right.job_id)
    for branch in (left, right):
        lineage = client.manifest(branch.job_id)["lineage"]
        assert (lineage["parent_id"], lineage["turn"]) == (parent.job_id, 1)


def test_failed_parent_fails_its_descendants_with_the_reason(cluster: Cluster,
                                                              client: Client) -> None:
    broken = client.submit(new_job(JobKind.EDIT, prompt="x", source_image="uploads/nowhere.png",
                                   width=SIDE, height=SIDE))
    child = client.edit("brighter", parent=broken.job_id)
    grandchild = client.refine(parent=child.job_id)
    cluster.start(ModelType.EDIT)
    failed = broken.wait(60)
    assert failed.status is JobStatus.FAILED
    assert failed.error_code == "input_invalid"
    assert "uploads/nowhere.png" in (failed.error or "") and "missing" in (failed.error or "")
    for descendant in (child, grandchild):
        record = descendant.wait(10)
        assert record.status is JobStatus.FAILED
        assert record.error_code == "parent_failed"
        assert (record.error or "").startswith("parent failed")
    late = client.edit("too late", parent=broken.job_id)
    assert late.status().status is JobStatus.FAILED
    assert late.status().error == "parent failed"


def test_corrupt_or_missing_inputs_fail_typed_and_the_worker_serves_on(
        cluster: Cluster, client: Client) -> None:
    edit_worker, turbo_worker = cluster.start_many(ModelType.EDIT, ModelType.TURBO)
    client.store.put("uploads/corrupt.png", b"\x89PNG\r\n\x1a\n this is not a png", "image/png")
    corrupt = client.submit(new_job(JobKind.EDIT, prompt="x", source_image="uploads/corrupt.png",
                                    width=SIDE, height=SIDE))
    parent = client.generate("a cat", width=SIDE, height=SIDE)
    assert parent.wait(60).status is JobStatus.SUCCEEDED
    # The parent's image vanishes from storage before its child runs.
    image_key = parent.status().image
    assert image_key is not None
    client.store.client.delete_object(Bucket=client.store.bucket,  # type: ignore[attr-defined]
                                      Key=client.store._key(image_key))  # type: ignore[attr-defined]
    orphan = client.edit("x", parent=parent.job_id)
    healthy = client.edit("a hat", image=_png(SIDE), seed=3)

    assert corrupt.wait(60).error_code == "input_invalid"
    assert "not a readable image" in (corrupt.status().error or "")
    assert orphan.wait(60).error_code == "input_invalid"
    assert "missing" in (orphan.status().error or "")
    assert healthy.wait(60).status is JobStatus.SUCCEEDED
    assert edit_worker.proc.poll() is None and turbo_worker.proc.poll() is None


def test_unknown_parent_is_refused_at_submit(cluster: Cluster, client: Client) -> None:
    with pytest.raises(JobNotFound, match="no-such-job"):
        client.edit("x", parent="no-such-job")


def _png(side: int) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


def test_more_urgent_job_overtakes_queued_ones(cluster: Cluster, client: Client) -> None:
    bulk = [client.generate(f"bulk {i}", width=32, height=32, priority=1) for i in range(4)]
    urgent = client.generate("urgent", width=32, height=32, priority=9)
    cluster.start(ModelType.TURBO)
    records = [h.wait(60) for h in [*bulk, urgent]]
    first = min(records, key=lambda r: r.started_at or 0.0)
    assert first.spec.job_id == urgent.job_id


def test_overdue_bulk_job_is_promoted_so_it_is_not_starved(cluster: Cluster,
                                                           client: Client) -> None:
    cluster.start(ModelType.TURBO, extra_env={"ZQ_MAX_WAIT_S": "1"})
    blocker = client.generate("keeps the worker busy", width=1024, height=1024, steps=150)
    deadline = time.monotonic() + 60
    while blocker.status().step < 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    bulk = client.generate("bulk", width=32, height=32, priority=0)
    while "promoted_at" not in client.jobs.redis.hgetall(client.jobs.job_key(bulk.job_id)):
        assert time.monotonic() < deadline, "the overdue job was never promoted"
        time.sleep(0.1)
    urgent = [client.generate(f"urgent {i}", width=32, height=32, priority=9) for i in range(3)]
    client.cancel(blocker.job_id)
    records = [h.wait(60) for h in [bulk, *urgent]]
    assert all(r.status is JobStatus.SUCCEEDED for r in records)
    bulk_start = records[0].started_at or 0.0
    assert all(bulk_start < (r.started_at or 0.0) for r in records[1:])
    assert records[0].deliveries == 1  # its original message was dropped, not run again
