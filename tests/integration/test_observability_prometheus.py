"""A real Prometheus scrapes real workers and ``zq exporter``; the rules and dashboard are valid.

The alert rules are checked and unit-tested with promtool, and every PromQL expression of the
rules and of the Grafana dashboard is run by a real Prometheus (a syntax error is a 400).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.job import ModelType
from common.status import JobStatus
from producer.client import Client, JobHandle
from tests.conftest import require
from tests.integration.cluster import Cluster
from tests.services.prometheus import (
    PrometheusServer,
    free_port,
    prometheus_available,
    start_prometheus,
)
from zq.processes import stop

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS_TEST = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
EXAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.example.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "zimage-queue.json"
# Grafana's variables as a query would see them with every model selected.
GRAFANA_VARIABLES = {"$model": ".*", "$__rate_interval": "1m", "$__interval": "1m"}
# Holds the turbo worker while Prometheus looks at the queue: 150 steps of the tiny model at
# 1536 px take well over 15 s on a CPU (at 512 px, under 2 s: too close to the scrape
# interval). Cancelled at the end, which stops it at its next step.
SLOW = {"width": 1536, "height": 1536, "steps": 150}
SMALL = {"width": 32, "height": 32}


@pytest.fixture
def prometheus_tools() -> None:
    """Prometheus and promtool (scripts/install-system-deps), required in CI."""
    require(prometheus_available(), "prometheus and promtool (scripts/install-system-deps)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """Run promtool; fail with its output unless it succeeds."""
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done


def test_alert_rules_pass_promtool(prometheus_tools: None) -> None:
    checked = promtool("check", "rules", str(ALERTS))
    assert "SUCCESS" in checked.stdout
    promtool("test", "rules", str(ALERTS_TEST))
    promtool("check", "config", str(EXAMPLE_CONFIG))
    tested = yaml.safe_load(ALERTS_TEST.read_text())
    fired = {t["alertname"] for case in tested["tests"] for t in case.get("alert_rule_test", [])
             if t["exp_alerts"]}
    assert fired == set(alert_names()), "every alert needs a unit test where it fires"


def test_dashboard_and_rule_expressions_are_valid_promql(prometheus_tools: None,
                                                         tmp_path: Path) -> None:
    prometheus = start_prometheus(tmp_path, {}, rule_files=[ALERTS])
    try:
        check_expressions(prometheus)
        assert_rules_loaded(prometheus)
    finally:
        prometheus.stop()


def test_prometheus_scrapes_workers_and_queue_load(prometheus_tools: None, cluster: Cluster,
                                                   client: Client, tmp_path: Path) -> None:
    ports = {ModelType.TURBO: free_port(), ModelType.EDIT: free_port()}
    workers = {model: cluster.start(model, wait=False,
                                    extra_env={"ZQ_METRICS_PORT": str(port)})
               for model, port in ports.items()}
    with exporter(cluster, tmp_path) as exporter_port, scraper(tmp_path, {
        "zq-worker": [f"127.0.0.1:{port}" for port in ports.values()],
        "zq-exporter": [f"127.0.0.1:{exporter_port}"],
    }) as prometheus:
        for worker in workers.values():
            cluster.wait_ready(worker)
        # Workers create their job series at zero when they start, so once scraped, rate()
        # counts even the first job of each kind.
        prometheus.wait_for('up{job=~"zq-.*"} == 1', lambda r: len(r) == 3, timeout_s=20)
        prometheus.wait_for('zq_jobs_total{status="succeeded"} == 0', lambda r: len(r) == 6)
        check_jobs_and_phases(prometheus, client)
        check_worker_gauges(prometheus)
        check_queue_load(prometheus, client)
        check_expressions(prometheus)
        assert_rules_loaded(prometheus)


def check_jobs_and_phases(prometheus: PrometheusServer, client: Client) -> None:
    """5 turbo generates and 3 edits of them are counted, timed and rated per model."""
    generated = [client.generate(f"a lighthouse {i}", seed=i, **SMALL) for i in range(5)]
    edits = [client.edit(f"at night {i}", parent=generated[i].job_id, **SMALL)
             for i in (0, 1, 2)]
    assert_all_succeeded(generated + edits)

    succeeded = prometheus.wait_for(
        'sum by (model) (zq_jobs_total{status="succeeded"})',
        lambda r: by_model(r) == {"turbo": 5.0, "edit": 3.0})
    assert by_model(succeeded) == {"turbo": 5.0, "edit": 3.0}
    assert by_model(prometheus.query('sum by (model) (zq_jobs_total{status!="succeeded"})')) \
        in ({}, {"turbo": 0.0, "edit": 0.0})

    median = prometheus.wait_for(
        'histogram_quantile(0.5, sum by (le) '
        '(rate(zq_job_phase_seconds_bucket{phase="denoise"}[1m])))',
        lambda r: len(r) == 1 and 0 < float(r[0]["value"][1]) < 30)
    assert 0 < float(median[0]["value"][1]) < 30
    p95 = prometheus.wait_for(
        'histogram_quantile(0.95, sum by (model, le) (rate(zq_job_duration_seconds_bucket[1m])))',
        lambda r: set(by_model(r)) == {"turbo", "edit"})
    assert all(0 < v < 60 for v in by_model(p95).values()), p95
    steps = by_model(prometheus.query("sum by (model) (zq_denoise_steps_total)"))
    assert steps["turbo"] > 0 and steps["edit"] > 0


def check_worker_gauges(prometheus: PrometheusServer) -> None:
    """Both workers say ready, loaded their model, and are counted by the exporter."""
    assert by_model(prometheus.query("zq_worker_ready")) == {"turbo": 1.0, "edit": 1.0}
    loads = by_model(prometheus.query("zq_model_load_seconds"))
    assert set(loads) == {"turbo", "edit"} and all(v > 0 for v in loads.values()), loads
    ready = by_model(prometheus.query('zq_workers_ready{model=~"turbo|edit"}'))
    assert ready == {"turbo": 1.0, "edit": 1.0}
    # Absent without a GPU; wherever reported, reserved is a fraction of the total.
    gpu = prometheus.query("zq_gpu_memory_reserved_bytes / zq_gpu_memory_total_bytes")
    assert all(0 <= float(row["value"][1]) <= 1 for row in gpu), gpu


def check_queue_load(prometheus: PrometheusServer, client: Client) -> None:
    """A busy turbo worker and 3 waiting jobs: load is 4.

    The urgent job (priority 9) sits in the queue's own list and the two default-priority ones
    in another (``zq.turbo\\x06\\x164``): LLEN of the queue alone would read 1.
    """
    slow = client.generate("a slow storm", **SLOW)
    queued: list[JobHandle] = []
    try:
        deadline = time.monotonic() + 60
        while slow.status().step < 1:
            assert time.monotonic() < deadline, f"slow job never ran: {slow.status()}"
            time.sleep(0.05)
        queued = [client.generate("waiting 1", **SMALL),
                  client.generate("waiting urgent", priority=9, **SMALL),
                  client.generate("waiting 2", **SMALL)]
        for name, expected in (("waiting", 3), ("running", 1), ("reserved", 1), ("load", 4)):
            prometheus.wait_for(f'zq_queue_{name}{{model="turbo"}}',
                                lambda r, n=expected: by_model(r) == {"turbo": float(n)})
        oldest = by_model(prometheus.query('zq_queue_oldest_waiting_seconds{model="turbo"}'))
        assert 0 < oldest["turbo"] < 60
        assert slow.status().status is JobStatus.RUNNING, "the slow job ended too soon"
        # Still idle on edit.
        assert by_model(prometheus.query('zq_queue_load{model="edit"}')) == {"edit": 0.0}
    finally:
        for handle in [slow, *queued]:
            client.cancel(handle.job_id)


# -- helpers ---------------------------------------------------------------------------------
@contextmanager
def exporter(cluster: Cluster, tmp_path: Path) -> Iterator[int]:
    """``python -m zq exporter`` for the cluster on a free port; yields the port."""
    port = free_port()
    with (tmp_path / "exporter.log").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zq", "exporter", "--port", str(port),
             "--address", "127.0.0.1"],
            env={**os.environ, **cluster.env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield port
    finally:
        stop(proc)


@contextmanager
def scraper(tmp_path: Path, targets: dict[str, list[str]]) -> Iterator[PrometheusServer]:
    """A Prometheus scraping ``targets`` every second, with the alert rules loaded."""
    server = start_prometheus(tmp_path, targets, scrape_interval_s=1, rule_files=[ALERTS])
    try:
        yield server
    finally:
        server.stop()


def by_model(results: list[dict[str, Any]]) -> dict[str, float]:
    """Query results as ``{model: value}``."""
    return {row["metric"].get("model", ""): float(row["value"][1]) for row in results}


def assert_all_succeeded(handles: list[JobHandle]) -> None:
    records = [h.wait(120) for h in handles]
    assert all(r.status is JobStatus.SUCCEEDED for r in records), \
        [(r.status, r.error_code) for r in records]


def alert_names() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r]


def rule_expressions() -> list[str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def dashboard_expressions() -> list[str]:
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr" and isinstance(value, str):
                    found.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def grafana_to_promql(expr: str) -> str:
    # Longest names first: $__rate_interval before $__interval.
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def check_expressions(prometheus: PrometheusServer) -> None:
    """Every dashboard and rule expression runs on Prometheus without an error."""
    dashboard = dashboard_expressions()
    assert len(dashboard) >= 20, "dashboard lost its panels?"
    errors = []
    for expr in [*map(grafana_to_promql, dashboard), *rule_expressions()]:
        try:
            prometheus.query(expr)
        except Exception as exc:  # collect them all, then fail once
            errors.append(f"{expr}\n  -> {exc}")
    assert not errors, "\n".join(errors)


def assert_rules_loaded(prometheus: PrometheusServer) -> None:
    """The server loaded every rule of alerts.yml and evaluates them without errors."""
    groups = prometheus.api("rules")["groups"]
    alerts = [r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"]
    assert sorted(alerts) == sorted(alert_names())
    # Rules are evaluated every second here; wait for one evaluation of each.
    deadline = time.monotonic() + 10
    while any(r.get("health") == "unknown" for g in groups for r in g["rules"]):
        assert time.monotonic() < deadline, "rules never evaluated"
        time.sleep(0.2)
        groups = prometheus.api("rules")["groups"]
    bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
           if r.get("health") != "ok"]
    assert not bad, bad
