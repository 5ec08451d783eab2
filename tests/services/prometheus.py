"""Start a throw-away Prometheus server for integration tests: a real scraper and PromQL.

Bound to 127.0.0.1 on a free port, with its config, TSDB and log under ``workdir``.  Scrapes
the given targets at ``scrape_interval_s`` and evaluates the given rule files just as often.
The first scrape lands ~5 s after start whatever the interval, so use :meth:`wait_for`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zq.processes import free_port, spawn, stop

START_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 10.0


def prometheus_available() -> bool:
    """Return True when both ``prometheus`` and ``promtool`` are on PATH."""
    return all(shutil.which(b) for b in ("prometheus", "promtool"))


class PromQLError(RuntimeError):
    """Prometheus refused a query; the message holds its error type and text."""


@dataclass
class PrometheusServer:
    """A running Prometheus; call :meth:`stop` when done."""

    url: str
    workdir: Path
    config: Path
    startup_s: float
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def api(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """GET ``/api/v1/<path>`` and return its ``data``; raise PromQLError on an error."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}",
                                        timeout=HTTP_TIMEOUT_S) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the reason as JSON
            raw = exc.read()
            try:
                body = json.loads(raw)
            except ValueError:
                raise PromQLError(f"HTTP {exc.code} for {path}: {raw[:500]!r}") from exc
        if body.get("status") != "success":
            raise PromQLError(f"{body.get('errorType')}: {body.get('error')}"
                              f" ({path} {dict(params or {})})")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query: the list of results (``{"metric": ..., "value": [t, "v"]}``).

        A scalar or string result comes back as a one-element list with no labels.
        """
        data = self.api("query", {"query": promql})
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def values(self, promql: str) -> dict[str, float]:
        """An instant query as ``{label-set: value}``; the key is "" for a label-less result."""
        out = {}
        for result in self.query(promql):
            key = ",".join(f"{k}={v}" for k, v in sorted(result["metric"].items()))
            out[key] = float(result["value"][1])
        return out

    def wait_for(self, promql: str, predicate: Callable[[list[dict[str, Any]]], bool],
                 timeout_s: float = 15.0, poll_s: float = 0.25) -> list[dict[str, Any]]:
        """Poll ``promql`` until ``predicate(results)`` holds; return those results.

        Raises AssertionError with the last results (and the scrape targets' health) on
        timeout, and PromQLError at once on a bad query.
        """
        deadline = time.monotonic() + timeout_s
        results = self.query(promql)
        while not predicate(results):
            if time.monotonic() > deadline:
                raise AssertionError(f"{promql!r} did not reach the condition in {timeout_s}s;"
                                     f" last {results}; targets {self.target_health()}")
            time.sleep(poll_s)
            results = self.query(promql)
        return results

    def target_health(self) -> list[tuple[str, str, str]]:
        """(job, scrape url, health + last error) for every active target."""
        try:
            targets = self.api("targets")["activeTargets"]
        except (PromQLError, OSError) as exc:
            return [("?", "?", str(exc))]
        return [(t["labels"].get("job", "?"), t["scrapeUrl"],
                 f"{t['health']} {t.get('lastError', '')}".strip()) for t in targets]

    def log_text(self) -> str:
        """What Prometheus printed so far."""
        log = self.workdir / "prometheus.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self, keep_files: bool = False) -> None:
        """Kill Prometheus by PID and wait until it is gone; safe to call more than once.

        Unless ``keep_files``, its directory (config, TSDB, log) is deleted.
        """
        proc, self.proc = self.proc, None
        if proc is not None:
            stop(proc, timeout_s=5)
        if not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_prometheus(workdir: Path, targets: Mapping[str, Sequence[str]],
                     scrape_interval_s: float = 1, rule_files: Iterable[Path | str] = ()
                     ) -> PrometheusServer:
    """Start Prometheus scraping ``targets`` (job name -> ``host:port`` list); wait for ready.

    Everything goes under ``workdir / "prometheus"`` (deleted by :meth:`PrometheusServer.stop`).
    Raises RuntimeError with the server's log if it exits or is not ready in time.
    """
    t0 = time.monotonic()
    d = Path(workdir).resolve() / "prometheus"
    (d / "data").mkdir(parents=True, exist_ok=True)
    config = d / "prometheus.yml"
    config.write_text(_config(targets, scrape_interval_s, rule_files))
    port = free_port()
    server = PrometheusServer(url=f"http://127.0.0.1:{port}", workdir=d, config=config,
                              startup_s=0.0)
    cmd = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={d / 'data'}",
           f"--web.listen-address=127.0.0.1:{port}", "--web.enable-lifecycle",
           "--storage.tsdb.retention.time=1d", "--log.level=warn"]
    try:
        server.proc = spawn(cmd, d / "prometheus.log")
        _wait_ready(server)
    except BaseException:
        server.stop(keep_files=True)  # leave the log for a post-mortem
        raise
    server.startup_s = time.monotonic() - t0
    return server


def _config(targets: Mapping[str, Sequence[str]], interval_s: float,
            rule_files: Iterable[Path | str]) -> str:
    interval = f"{int(interval_s * 1000)}ms"
    # JSON is YAML: no YAML library needed, and every string is quoted safely.
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval,
                   "scrape_timeout": interval},
        "rule_files": [str(Path(f).resolve()) for f in rule_files],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": list(addrs)}]}
                           for job, addrs in targets.items()],
    }
    return json.dumps(config, indent=2) + "\n"


def _wait_ready(server: PrometheusServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited rc={server.proc.returncode}:\n"
                               f"{server.log_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:  # refused, or 503 while the TSDB opens
            pass
        time.sleep(0.02)
    raise RuntimeError(f"prometheus not ready within {START_TIMEOUT_S}s:\n"
                       f"{server.log_text()[-4000:]}")
