"""Re-run a finished job from its stored manifest and compare the images byte for byte."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any

from common.errors import JobFailed
from common.job import JobSpec
from common.status import JobStatus
from producer.client import Client


@dataclass(frozen=True)
class ReplayResult:
    """What a replay found."""

    job_id: str
    replay_id: str
    identical: bool
    same_revision: bool
    original_revision: str
    replay_revision: str

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``zq replay --json``."""
        return dataclasses.asdict(self)


def replay(client: Client, job_id: str, timeout_s: float = 3600.0) -> ReplayResult:
    """Submit the manifest's spec again under a new id, wait, and compare the images.

    Same model revision and hardware class give the same bytes; a different
    revision is reported as such rather than as a failure to reproduce.
    """
    original = client.status(job_id)
    if original.status is not JobStatus.SUCCEEDED:
        raise JobFailed(f"job {job_id} is {original.status.value}; only a finished job replays")
    manifest = client.manifest(job_id)
    spec = JobSpec.from_dict(manifest["spec"])
    replay_id = f"{job_id[:80]}-replay-{uuid.uuid4().hex[:8]}"
    copy = dataclasses.replace(spec, job_id=replay_id, tags={**spec.tags, "replay_of": job_id})
    client.submit(copy)
    image = client.result(replay_id, timeout_s)
    replayed = client.manifest(replay_id)
    before, after = manifest["model"]["revision"], replayed["model"]["revision"]
    return ReplayResult(job_id=job_id, replay_id=replay_id,
                        identical=image == client.store.get(manifest["image"]["key"]),
                        same_revision=before == after, original_revision=before,
                        replay_revision=after)
