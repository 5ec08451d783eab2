"""Running campaigns: one batch per (campaign, period), enqueued at most once.

A run's batch id and every variant's job id derive from the campaign name, the period
and the variant, so running the same period again (by hand, or a second scheduler)
submits nothing new. A finished run gets a summary manifest in storage under
``campaigns/<name>/<period>/summary.json``; its images live under the run's
conversation folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from common.batches import BatchRow
from common.errors import InvalidJob
from common.job import new_job
from common.webhook_policy import WebhookPolicy
from producer.batch import UNREACHABLE, Batches, Submission, finished
from producer.campaign import Campaign, expand, job_fields
from producer.client import Client
from producer.cron import parse_period_id, period_id
from producer.manifest import RowError


def current_period(campaign: Campaign, now: datetime | None = None) -> str:
    """The period the schedule is in now: its latest tick at or before ``now``.

    The schedule is read in the campaign's zone; the period id is that tick in UTC.
    """
    now = now or datetime.now(UTC)
    return period_id(campaign.cron.previous(now))


def previous_period(campaign: Campaign, period: str) -> str:
    """The period before ``period``."""
    tick = parse_period_id(period) - timedelta(minutes=1)
    return period_id(campaign.cron.previous(tick))


def run_batch_id(campaign: Campaign, period: str) -> str:
    """The batch holding one run of a campaign."""
    return f"run-{campaign.name}-{re.sub(r'[^A-Za-z0-9_.-]', '-', period)}"


def summary_key(campaign: Campaign, period: str) -> str:
    """Where a finished run's summary manifest lives."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", period)
    return f"campaigns/{campaign.name}/{safe}/summary.json"


def run_campaign(client: Client, campaign: Campaign, period: str) -> Submission:
    """Enqueue every variant of ``period`` that is not already done or queued.

    A variant that cannot become a job (a missing or hostile image, a field out of
    range) is a row error and the others still go in; the run's batch is always sealed.
    Editing a campaign file during a period changes its variants' specs but not their
    ids: re-running that period then makes those variants row errors (``JobConflict``).
    """
    if campaign.webhook:  # parsing checked its form; where it leads is checked now
        WebhookPolicy(client.settings.webhook_allow).vet(campaign.webhook)
    batch_id = run_batch_id(campaign, period)
    shard = Batches(client).shard(batch_id)
    store = shard.jobs.batches
    store.create(batch_id, {"campaign": campaign.name, "period": period,
                                    "webhook": campaign.webhook, "webhook_kind": "campaign_run"})
    jobs, errors = 0, []
    for line, variant in enumerate(expand(campaign, period), start=1):
        try:
            # A local image is an absolute path by now; anything else is a storage key.
            source = client.stage(variant.image, "image") if variant.image else None
            key = source.key if source is not None else None
            spec = new_job(variant.kind, **job_fields(campaign, variant, key))
            if source is not None:  # stored only once the variant's spec is valid
                source.put(client.store)
            client.submit(spec, shard=shard)
        except UNREACHABLE:
            raise
        except Exception as exc:  # one bad variant is its row's error, never the run's
            field = exc.field if isinstance(exc, InvalidJob) else "row"
            error = RowError(line, variant.variant_key, str(exc) if isinstance(exc, InvalidJob)
                             else f"row: {type(exc).__name__}: {exc}", field)
            errors.append(error)
            store.add_row(batch_id, BatchRow(line, variant.variant_key, None,
                                                     error.reason))
            continue
        store.add_row(batch_id, BatchRow(line, variant.variant_key, spec.job_id))
        jobs += 1
    if store.seal(batch_id):
        finished(shard, batch_id)
    return Submission(batch_id, jobs, errors)


def write_summary(client: Client, campaign: Campaign, period: str) -> str | None:
    """Store the run's summary manifest if every variant has ended; returns its key."""
    batches = Batches(client)
    batch_id = run_batch_id(campaign, period)
    finished_at = batches.store(batch_id).finished_at(batch_id)
    if finished_at is None:
        return None
    results = batches.results_light(batch_id)
    summary: dict[str, Any] = {
        "campaign": campaign.name, "period": period, "batch_id": batch_id,
        "finished_at": finished_at,
        "counts": {s: sum(r.status == s for r in results) for s in {r.status for r in results}},
        "variants": [{**asdict(r), "variant": r.sku} for r in results],
    }
    key = summary_key(campaign, period)
    client.store.put(key, json.dumps(summary, indent=2).encode(), "application/json")
    return key
