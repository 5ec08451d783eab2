"""``zq campaign run FILE`` and ``zq beat``: campaigns now, and on their schedules."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from producer.batch import Batches
from producer.batch_cli import follow
from producer.campaign import Campaign, load_campaign
from producer.campaign_run import (
    current_period,
    previous_period,
    run_batch_id,
    run_campaign,
    write_summary,
)
from producer.client import Client
from producer.cron import parse_period_id

log = logging.getLogger("zq.beat")
CAMPAIGN_SUFFIXES = {".yaml", ".yml", ".json"}


def add_commands(commands: Any) -> None:
    """Register ``zq campaign`` and ``zq beat``."""
    campaign = commands.add_parser("campaign", help="run an ad-variant campaign now")
    actions = campaign.add_subparsers(dest="action", required=True)
    run = actions.add_parser("run", help="expand and enqueue a campaign period")
    run.add_argument("file", type=Path)
    run.add_argument("--period", help="period id: a schedule tick in UTC, e.g. "
                     "2026-11-23T09:00Z (default: the current period)")
    run.add_argument("--wait", action="store_true", help="wait and write the summary")
    run.add_argument("--timeout", type=float, default=86400.0)
    run.set_defaults(handler=_run)

    beat = commands.add_parser("beat", help="run every campaign in a folder on its schedule")
    beat.add_argument("--campaigns", type=Path, required=True, help="folder of campaign files")
    beat.add_argument("--interval", type=float, default=30.0, help="seconds between checks")
    beat.add_argument("--once", action="store_true", help="check once and exit")
    beat.set_defaults(handler=_beat)


def _run(client: Client, args: argparse.Namespace) -> int:
    campaign = load_campaign(args.file)
    period = args.period or current_period(campaign)
    if not campaign.cron.matches(parse_period_id(period)):
        # Allowed (an extra run), but a local time typed as UTC is the likely mistake.
        print(f"note: {period} is not a tick of {campaign.schedule!r} in {campaign.timezone} "
              f"(the current period is {current_period(campaign)})", file=sys.stderr)
    submission = run_campaign(client, campaign, period)
    print(f"campaign {campaign.name} period {period}: {submission.jobs} variants "
          f"(batch {submission.batch_id})", file=sys.stderr)
    for error in submission.errors:
        print(f"variant {error.line} ({error.sku}): {error.reason}", file=sys.stderr)
    if args.wait:
        follow(Batches(client), submission.batch_id, args.timeout, sys.stderr)
        print(f"summary: {write_summary(client, campaign, period)}", file=sys.stderr)
    print(submission.batch_id)
    return 0


def beat_once(client: Client, folder: Path) -> list[str]:
    """Run each campaign's current period if it has not run; summarise finished runs.

    Safe to run in several processes at once: a period's jobs are enqueued once however
    often it is run. Returns the batch ids started now.
    """
    started = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in CAMPAIGN_SUFFIXES):
        try:
            campaign = load_campaign(path)
            period = current_period(campaign)
            batch_id = run_batch_id(campaign, period)
            # Not sealed: a run cut short (Redis went away); running it again finishes it.
            if not Batches(client).store(batch_id).sealed(batch_id):
                run_campaign(client, campaign, period)
                log.info("campaign %s: started period %s", campaign.name, period)
                started.append(batch_id)
            # The run of the period just ended may have finished since the last check.
            for recent in (period, previous_period(campaign, period)):
                _summarise(client, campaign, recent)
        except Exception:  # one broken campaign file must not stop the others
            log.exception("campaign file %s failed", path)
    return started


def _summarise(client: Client, campaign: Campaign, period: str) -> None:
    from producer.campaign_run import summary_key

    if not client.store.exists(summary_key(campaign, period)):
        write_summary(client, campaign, period)


def _beat(client: Client, args: argparse.Namespace) -> int:
    logging.getLogger("zq").setLevel(logging.INFO)
    while True:
        for batch_id in beat_once(client, args.campaigns):
            print(f"started {batch_id}", flush=True)
        if args.once:
            return 0
        time.sleep(args.interval)
