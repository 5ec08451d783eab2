"""The audit trail: one JSON line per job state change, on the ``zq.audit`` logger.

Lines carry ids, model, revision, seed, reasons and timings; never credentials or
URLs (a presigned URL is a credential), never image data.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from common.job import JobSpec

AUDIT_LOGGER = "zq.audit"
audit_log = logging.getLogger(AUDIT_LOGGER)


def configure_audit_logging(stream: Any = None) -> None:
    """Send audit lines, bare JSON, to ``stream`` (stderr by default); idempotent."""
    if any(getattr(h, "zq_audit", False) for h in audit_log.handlers):
        return
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.zq_audit = True  # type: ignore[attr-defined]
    audit_log.addHandler(handler)
    audit_log.setLevel(logging.INFO)
    audit_log.propagate = False


def audit_event(event: str, spec: JobSpec, **fields: Any) -> dict[str, Any]:
    """Log one state change of ``spec``'s job and return the record that was logged."""
    record: dict[str, Any] = {
        "ts": round(time.time(), 6),
        "event": event,
        "job_id": spec.job_id,
        "kind": spec.kind.value,
        "model": spec.model.value,
        "conversation_id": spec.conversation_id,
        "parent_id": spec.parent_id,
        "seed": spec.seed,
        **fields,
    }
    audit_log.info(json.dumps(record, sort_keys=True, default=str))
    return record
