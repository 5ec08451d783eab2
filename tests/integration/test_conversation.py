"""The four-turn conversation through real Redis, Ceph RGW, worker processes, tiny models."""

from __future__ import annotations

import io
import itertools

import pytest
from PIL import Image

from common.job import ModelType
from common.status import JobStatus
from producer.client import Client
from producer.conversation import Conversation
from tests.integration.cluster import Cluster
from zq.demo import HD_PROMPT, TURNS, left_third_mask

pytestmark = pytest.mark.integration
SIDE = 64


def test_whole_conversation_submitted_before_workers_completes_in_order(
        cluster: Cluster, client: Client) -> None:
    chat = Conversation(client, width=SIDE, height=SIDE, seed=7)
    first = chat.say(TURNS[0])
    second = chat.say(TURNS[1])
    third = chat.say(TURNS[2], mask=left_third_mask(SIDE))
    fourth = chat.refine(HD_PROMPT, width=SIDE * 2, height=SIDE * 2)
    assert first.status().status is JobStatus.QUEUED
    assert [t.status().status for t in (second, third, fourth)] == [JobStatus.WAITING] * 3

    cluster.start_many(*ModelType)
    records = [turn.wait(120) for turn in chat.turns]

    assert [r.status for r in records] == [JobStatus.SUCCEEDED] * 4, [r.error for r in records]
    assert [r.spec.model for r in records] == [ModelType.TURBO, ModelType.EDIT,
                                               ModelType.EDIT, ModelType.BASE]
    for earlier, later in itertools.pairwise(records):
        assert later.started_at is not None and earlier.finished_at is not None
        assert later.started_at >= earlier.finished_at
    for turn, record in enumerate(records):
        manifest = client.manifest(record.spec.job_id)
        lineage = manifest["lineage"]
        assert lineage["conversation_id"] == chat.conversation_id
        assert lineage["root_id"] == first.job_id
        assert lineage["turn"] == turn
        assert lineage["parent_id"] == (records[turn - 1].spec.job_id if turn else None)
        assert manifest["model"]["type"] == record.spec.model.value
        assert manifest["model"]["revision"].startswith("local-")
        assert manifest["seed"] == 7
        size = SIDE * 2 if turn == 3 else SIDE
        with Image.open(io.BytesIO(client.result(record.spec.job_id))) as image:
            assert image.size == (size, size)
            assert image.format == "PNG"
    assert records[2].spec.mask is not None
    assert client.manifest(third.job_id)["lineage"]["inputs"]["mask"] == records[2].spec.mask


def test_same_seed_same_bytes_other_seed_other_bytes(cluster: Cluster, client: Client) -> None:
    cluster.start(ModelType.TURBO)
    a = client.generate("a red bicycle", width=SIDE, height=SIDE, seed=11)
    b = client.generate("a red bicycle", width=SIDE, height=SIDE, seed=11)
    c = client.generate("a red bicycle", width=SIDE, height=SIDE, seed=12)
    assert a.job_id != b.job_id
    assert a.result(60) == b.result(60)
    assert a.result(60) != c.result(60)
