"""The provenance manifest written beside every image."""

from __future__ import annotations

import time
from typing import Any

from common.status import JobRecord
from worker.results import RenderResult

MANIFEST_VERSION = 1


def build_manifest(record: JobRecord, model: dict[str, Any], result: RenderResult,
                   input_keys: dict[str, str], timings_s: dict[str, float], worker_id: str,
                   image_key: str) -> dict[str, Any]:
    """Everything needed to explain and reproduce the image: spec, model, lineage, timings."""
    spec = record.spec
    width, height = result.image.size
    return {
        "manifest_version": MANIFEST_VERSION,
        "job_id": spec.job_id,
        "kind": spec.kind.value,
        "spec": spec.to_dict(),
        "seed": spec.seed,
        "image": {"key": image_key, "width": width, "height": height,
                  "format": spec.output_format.value},
        "model": model,
        "lineage": {
            "conversation_id": spec.conversation_id,
            "parent_id": spec.parent_id,
            "root_id": record.root_id,
            "turn": record.turn,
            "inputs": input_keys,
        },
        "timings_s": {name: round(value, 6) for name, value in timings_s.items()},
        "steps_run": result.steps_run,
        "worker": worker_id,
        "deliveries": record.deliveries,
        "created_at": record.created_at,
        "started_at": record.started_at,
        "finished_at": time.time(),
    }
