"""Bulk catalogue editing: a manifest becomes one batch of content-addressed jobs.

Job ids derive from what a row asks for (prompt, input image bytes, mask, size, seed,
settings), so re-running the same command after an interruption submits nothing that
is done or queued, and the same edit in another batch reuses the finished image.
Bulk jobs default to a low priority so interactive turns overtake them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.batches import BatchRow
from common.errors import InvalidJob, JobNotFound, ZqError
from common.job import JobKind, JobSpec, new_job
from common.status import JobStatus
from producer.client import Client
from producer.manifest import ManifestRow, RowError, read_manifest

BULK_PRIORITY = 2
MAX_DOWNLOAD_BYTES = 50 * 1024 * 1024


@dataclass(frozen=True)
class Submission:
    """What submitting a manifest did."""

    batch_id: str
    jobs: int
    errors: list[RowError] = field(default_factory=list)


@dataclass(frozen=True)
class RowResult:
    """One line of the results manifest."""

    line: int
    sku: str
    job_id: str | None
    status: str
    image: str | None = None
    url: str | None = None
    error: str | None = None


def batch_id_for(manifest: Path, defaults: dict[str, Any]) -> str:
    """The same manifest with the same defaults is the same batch."""
    digest = hashlib.sha256(manifest.read_bytes())
    digest.update(json.dumps(defaults, sort_keys=True).encode())
    return f"batch-{digest.hexdigest()[:24]}"


class Batches:
    """Submits, follows and cancels batches through a ``Client``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.store = client.jobs.batches

    def submit(self, manifest: Path, defaults: dict[str, Any], webhook: str | None = None,
               batch_id: str | None = None) -> Submission:
        """Upload inputs, submit every good row, record the bad ones with their reason."""
        batch_id = batch_id or batch_id_for(manifest, defaults)
        meta = {"source": manifest.name, "defaults": defaults, "webhook": webhook}
        if webhook:
            from common.webhooks import validate_webhook_url

            validate_webhook_url(webhook)
        self.store.create(batch_id, meta)
        errors: list[RowError] = []
        jobs = 0
        for row in read_manifest(manifest):
            if isinstance(row, ManifestRow):
                try:
                    spec = self.row_spec(row, defaults, manifest.parent)
                    self.client.submit(spec)
                except (ZqError, OSError) as exc:
                    row = RowError(row.line, str(row.fields.get("sku", "")), str(exc))
                else:
                    self.store.add_row(batch_id, BatchRow(row.line, str(row.fields["sku"]),
                                                          spec.job_id))
                    jobs += 1
                    continue
            errors.append(row)
            self.store.add_row(batch_id, BatchRow(row.line, row.sku, None, row.reason))
        if self.store.seal(batch_id):
            self.client.jobs.batch_finished(batch_id)
        return Submission(batch_id, jobs, errors)

    def row_spec(self, row: ManifestRow, defaults: dict[str, Any], base: Path) -> JobSpec:
        """The job a row asks for, with an id derived from its content."""
        fields = {**defaults, **row.fields}
        sku = str(fields.pop("sku"))
        image, mask = fields.pop("image", None), fields.pop("mask", None)
        source = self._input(image, "image", base) if image else None
        mask_key = self._input(mask, "mask", base) if mask else None
        fields.setdefault("priority", BULK_PRIORITY)
        content = json.dumps({**fields, "source": source, "mask": mask_key}, sort_keys=True)
        digest = hashlib.sha256(content.encode()).hexdigest()
        # The seed too derives from the content, so a re-run asks for the same image.
        fields.setdefault("seed", int(digest[:8], 16) % 2**31)
        job_id = f"b-{digest[:32]}"
        kind = JobKind.EDIT if source else JobKind.GENERATE
        return new_job(kind, job_id=job_id, conversation_id=job_id, source_image=source,
                       mask=mask_key, tags={"sku": sku}, **fields)

    def _input(self, value: str, name: str, base: Path) -> str:
        if value.startswith(("http://", "https://")):
            return self.client.upload(_download(value, name), name)
        local = base / value  # relative paths are relative to the manifest
        return self.client.upload(local if local.is_file() else value, name)

    def results(self, batch_id: str) -> list[RowResult]:
        """Every row with its job's status now, and a presigned URL for each image."""
        return [dataclasses.replace(r, url=self.client.store.url(
                    r.image, self.client.settings.presign_expiry_s))
                if r.image and r.status == JobStatus.SUCCEEDED.value else r
                for r in self.results_light(batch_id)]

    def counts(self, batch_id: str) -> Counter[str]:
        """How many rows are in each status (``invalid`` for rows that never became jobs)."""
        return Counter(result.status for result in self.results_light(batch_id))

    def results_light(self, batch_id: str) -> list[RowResult]:
        """Like ``results`` without presigning URLs (cheap enough to poll)."""
        if not self.store.exists(batch_id):
            raise JobNotFound(f"batch {batch_id} is not known")
        rows = self.store.rows(batch_id)
        pipe = self.client.jobs.redis.pipeline(transaction=False)
        for row in rows:
            pipe.hmget(self.client.jobs.job_key(row.job_id or "-"), ["status", "image", "error"])
        out = []
        for row, (status, image, error) in zip(rows, pipe.execute(), strict=True):
            if row.job_id is None:
                out.append(RowResult(row.line, row.sku, None, "invalid", error=row.error))
            else:
                out.append(RowResult(row.line, row.sku, row.job_id, status or "unknown",
                                     image, None, error))
        return out

    def cancel(self, batch_id: str) -> int:
        """Cancel every job of the batch that has not ended; returns how many."""
        cancelled = 0
        for result in self.results_light(batch_id):
            if result.job_id and result.status in {"waiting", "queued", "running"}:
                self.client.cancel(result.job_id)
                cancelled += 1
        return cancelled


def write_results(results: list[RowResult], path: Path) -> None:
    """The results manifest: JSONL for ``.jsonl``, CSV otherwise."""
    columns = ("line", "sku", "job_id", "status", "image", "url", "error")
    rows = [{c: getattr(r, c) for c in columns} for r in results]
    if path.suffix.lower() in {".jsonl", ".ndjson"}:
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)


def _download(url: str, name: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            data: bytes = response.read(MAX_DOWNLOAD_BYTES + 1)
    except OSError as exc:
        raise InvalidJob(name, f"cannot download: {exc}", url) from None
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise InvalidJob(name, f"at most {MAX_DOWNLOAD_BYTES} bytes", url)
    return data
