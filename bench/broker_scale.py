"""How much Redis one job costs: Redis CPU and commands per job, zq against raw Celery.

Redis is the one shared piece of the queue; its CPU per job says how many GPUs one Redis
core can feed. Each side gets its own private Redis (``zq.embedded_redis.start_redis``),
W worker processes (``--workers``, default 4; many small CPU workers stand in for GPUs)
and P producer threads (``--producers``, default 2), one side after the other:

(a) zq: a local-directory store, the tiny turbo checkpoint
    (``worker.tiny_models.make_tiny_checkpoint``) and W real ``python -m zq worker --model
    turbo`` processes (OMP_NUM_THREADS=1, ZQ_METRICS_PORT=0, warm-up at the job size), each
    waited for until its registry hash ``{prefix}:worker:{name}`` says ``ready`` = 1. Each
    producer thread has its own ``producer.client.Client``, submits its share of the N
    generate jobs (``--size`` square, 1 step) with ``Client.submit`` and then waits for each
    with ``Client.wait`` (its default polling), as a user of the client library would.
(b) raw Celery: ``bench/_raw_celery.py``, a Celery app with zq's broker and worker options
    (late acks, reject on worker lost, no prefetch, priority steps 0..9, the same visibility
    timeout and queue names, task events, solo pool) plus a Redis result backend on the same
    Redis, and a no-op task that returns ``time.time()``. W ``celery worker`` processes run
    it with zq's worker flags (``--pool=solo --concurrency=1 --task-events --without-mingle
    --without-gossip``). Each producer thread sends its share of N tasks with
    ``apply_async`` (to ``zq.turbo``, at the broker priority zq uses for a default job) and
    then waits for each with ``AsyncResult.get`` (pub/sub on the result backend).

On each side, with the workers ready, Redis is sampled over an idle window (``--idle``
seconds, no jobs: worker heartbeats, Celery's pidbox and BRPOP polling, zq's liveness loop)
and over the job window (just before the first submit to just after the last wait
returns). Samples: ``INFO cpu`` (used_cpu_sys + used_cpu_user), the redis-server process's
utime + stime from ``/proc/<pid>/stat``, and ``INFO commandstats`` calls (the benchmark's
own INFO calls excluded). Per job, "gross" is the job window's delta / N; "net" subtracts
the idle rate times the job window's length. Idle workers poll more than busy ones (BRPOP
timeouts), so net is a slight underestimate of the per-job cost. Jobs/s at 100% of one Redis
core is 1e6 / net CPU us per job, which is also the number of 1-image/s GPUs one Redis core
can feed. Finally, the wake-up delay: J (``--wake``, default 30) sequential jobs, from the
job's end (zq: ``finished_at`` in its record; raw: the task's returned timestamp) to the
moment ``Client.wait`` / ``AsyncResult.get`` returns. Then ``--trace`` (default 20) more
sequential jobs run under ``MONITOR``, and each call is attributed to the process whose
socket issued it (producer or worker, via ``/proc``) or to a Lua script; ``evalsha`` is named
by script (``common/lua/{name}.lua``; a script's text, so its SHA1, is the same in every
process).

Run: ``python bench/broker_scale.py -n 300 --workers 4 [--label baseline]``; the results go
to the ``broker_scale`` section of RESULTS.md (``broker_scale_<label>`` with ``--label``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _shared import RESULTS, ROOT, table, write_section

from common import scripts as lua_scripts
from common.job import DEFAULT_PRIORITY, JobKind, JobSpec, new_job
from common.keys import Keys
from common.queueing import broker_priority
from common.settings import Settings
from common.status import JobStatus

TOP_COMMANDS = 15
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_REDIS_VERSION: list[str] = []  # filled by private_redis


@dataclass
class Sample:
    """One reading of the Redis server's counters."""

    at: float
    cpu_s: float  # INFO cpu: used_cpu_sys + used_cpu_user
    proc_s: float  # /proc/<pid>/stat: utime + stime
    calls: dict[str, int]  # INFO commandstats, without the benchmark's own INFO calls


@dataclass
class Window:
    """The difference between two samples."""

    seconds: float
    cpu_s: float
    proc_s: float
    calls: dict[str, int]

    @property
    def total_calls(self) -> int:
        """All commands in the window."""
        return sum(self.calls.values())


def sample(client: redis.Redis, pid: int) -> Sample:
    """Read Redis's CPU and command counters (INFO, /proc) now."""
    cpu = client.info("cpu")
    stats = client.info("commandstats")
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()
             if name != "cmdstat_info"}
    return Sample(time.monotonic(), float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]),
                  (int(fields[11]) + int(fields[12])) / CLOCK_TICKS, calls)


def window(before: Sample, after: Sample) -> Window:
    """What happened between two samples."""
    calls = {k: v - before.calls.get(k, 0) for k, v in after.calls.items()}
    return Window(after.at - before.at, after.cpu_s - before.cpu_s,
                  after.proc_s - before.proc_s, {k: v for k, v in calls.items() if v})


@dataclass
class SideResult:
    """One side's measurements."""

    name: str
    jobs: int
    idle: Window
    busy: Window
    wake_s: list[float] = field(default_factory=list)
    trace: list[list[object]] = field(default_factory=list)

    def idle_share(self) -> float:
        """The idle window scaled to the job window's length."""
        return self.busy.seconds / self.idle.seconds

    def cpu_us(self, net: bool, proc: bool = False) -> float:
        """Redis CPU microseconds per job (INFO cpu, or /proc with ``proc``)."""
        gross = self.busy.proc_s if proc else self.busy.cpu_s
        idle = self.idle.proc_s if proc else self.idle.cpu_s
        value = gross - (idle * self.idle_share() if net else 0.0)
        return value / self.jobs * 1e6

    def calls(self, net: bool, command: str | None = None) -> float:
        """Redis calls per job, all commands or one."""
        def count(w: Window) -> int:
            return w.total_calls if command is None else w.calls.get(command, 0)
        idle = count(self.idle) * self.idle_share() if net else 0.0
        return (count(self.busy) - idle) / self.jobs


def percentile(values: list[float], q: float) -> float:
    """The q-th quantile (0..1) of values, nearest rank; NaN for none."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


TRACE_LINE = re.compile(r'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]*)"(?: "([^"]*)")?')


class MonitorTrace:
    """Every command Redis runs while the trace is on (``MONITOR``), with its client."""

    def __init__(self, port: int) -> None:
        self.lines: list[str] = []
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(b"MONITOR\r\n")
        self._sock.settimeout(0.2)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        while not self._stopping.is_set():
            try:
                chunk = self._sock.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                break
            *done, buffer = (buffer + chunk).split(b"\r\n")
            self.lines += [line.decode("utf-8", "replace") for line in done]

    def stop(self) -> list[tuple[str, str, str | None]]:
        """End the trace; (client address or ``lua``, command, first argument) per call."""
        self._stopping.set()
        self._thread.join()
        self._sock.close()
        calls = []
        for line in self.lines:
            match = TRACE_LINE.match(line)
            if match and match.group(2).lower() not in ("info", "monitor"):
                calls.append((match.group(1), match.group(2).lower(), match.group(3)))
        return calls


def socket_roles(pids: dict[int, str]) -> dict[int, str]:
    """Local TCP port -> role, for the sockets the given processes hold open now."""
    inodes: dict[str, str] = {}
    for pid, role in pids.items():
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = role
    ports: dict[int, str] = {}
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table_path).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports[int(fields[1].rsplit(":", 1)[1], 16)] = inodes[fields[9]]
    return ports


def script_names() -> dict[str, str]:
    """SHA1 -> name of zq's Lua scripts (``common/lua/``): their text is the same in every
    process, so the workers' SHA1s are this process's."""
    return {hashlib.sha1(lua_scripts.load(name).encode()).hexdigest(): name
            for name in lua_scripts.names()}


def attribute(calls: list[tuple[str, str, str | None]], ports: dict[int, str],
              jobs: int) -> list[list[object]]:
    """Rows of (role, command, calls per job), most frequent first."""
    scripts = script_names()
    counts: dict[tuple[str, str], int] = {}
    for address, command, first in calls:
        if address == "lua":
            role = "inside Lua scripts"
        else:
            port = int(address.rsplit(":", 1)[1]) if ":" in address else -1
            role = ports.get(port, "other (connection closed)")
        if command == "evalsha" and first:
            command = f"evalsha {scripts.get(first, first[:10])}"
        counts[(role, command)] = counts.get((role, command), 0) + 1
    ordered = sorted(counts.items(), key=lambda item: (item[0][0], -item[1]))
    return [[role, command, count / jobs] for (role, command), count in ordered]


def wait_ready(procs: list[tuple[str, subprocess.Popen[bytes], Path]], client: redis.Redis,
               key: Callable[[str], str], timeout_s: float) -> None:
    """Block until every worker's hash says ready = 1; exit with a log tail if one dies."""
    deadline = time.monotonic() + timeout_s
    pending = list(procs)
    while pending:
        name, proc, log = pending[0]
        if client.hget(key(name), "ready") in (b"1", "1"):
            pending.pop(0)
            continue
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"worker {name} not ready (rc={proc.poll()}):\n"
                     f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def start_workers(stack: ExitStack, argvs: list[tuple[str, list[str], dict[str, str]]],
                  logs: Path) -> list[tuple[str, subprocess.Popen[bytes], Path]]:
    """Start worker processes; all get SIGTERM together, then a wait, when ``stack`` closes."""
    from zq.processes import spawn

    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, argv, env in argvs:
        log = logs / f"{name.replace('@', '_')}.log"
        saved = dict(os.environ)
        os.environ.update(env)  # spawn() inherits this process's environment
        try:
            procs.append((name, spawn(argv, log), log))
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def stop_all() -> None:
        from zq.processes import stop
        for _, proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
        for _, proc, _ in procs:
            stop(proc, 30)

    stack.callback(stop_all)
    return procs


def run_threads(shares: list[list[Any]], work: Callable[[int, list[Any]], None]) -> None:
    """Run ``work(index, share)`` on one thread per share, released together; re-raise."""
    errors: list[BaseException] = []
    gate = threading.Barrier(len(shares))

    def body(index: int, share: list[Any]) -> None:
        try:
            gate.wait()
            work(index, share)
        except BaseException as exc:  # surfaced in the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i, s)) for i, s in enumerate(shares)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def measure(client: redis.Redis, pid: int, idle_s: float,
            drive: Callable[[], None]) -> tuple[Window, Window]:
    """The idle window (workers up, no jobs) and the window around ``drive()``."""
    time.sleep(2.0)  # let start-up traffic settle
    first = sample(client, pid)
    time.sleep(idle_s)
    idle = window(first, sample(client, pid))
    before = sample(client, pid)
    drive()
    return idle, window(before, sample(client, pid))


@contextmanager
def private_redis(workdir: Path) -> Iterator[tuple[Any, redis.Redis]]:
    """A fresh embedded Redis and a client for it; stopped on exit."""
    from zq.embedded_redis import start_redis

    server = start_redis(workdir)
    try:
        client = redis.Redis.from_url(server.url)
        _REDIS_VERSION[:] = [str(client.info("server")["redis_version"])]
        yield server, client
    finally:
        server.stop()


def sequential(args: argparse.Namespace, result: SideResult, port: int,
               procs: list[tuple[str, subprocess.Popen[bytes], Path]],
               one: Callable[[int], float]) -> None:
    """Time ``args.wake`` sequential jobs' wake-up, then trace ``args.trace`` more."""
    result.wake_s = [one(i) for i in range(args.wake)]
    if not args.trace:
        return
    trace = MonitorTrace(port)
    for i in range(args.trace):
        one(args.wake + i)
    roles = {os.getpid(): "producer", **{proc.pid: "worker" for _, proc, _ in procs}}
    ports = socket_roles(roles)
    result.trace = attribute(trace.stop(), ports, args.trace)


def zq_side(args: argparse.Namespace, workdir: Path, checkpoint: Path) -> SideResult:
    """Run the zq side: real workers, ``Client.submit`` and ``Client.wait``."""
    from producer.client import Client

    with ExitStack() as stack:
        server, client = stack.enter_context(private_redis(workdir / "redis"))
        prefix = f"zqb{uuid.uuid4().hex[:6]}"
        env = {"ZQ_REDIS_URL": server.url, "ZQ_STORAGE_URL": (workdir / "storage").as_uri(),
               "ZQ_MODEL_TURBO": str(checkpoint), "ZQ_DEVICE": "cpu", "ZQ_KEY_PREFIX": prefix,
               "ZQ_METRICS_PORT": "0", "ZQ_WARMUP_SIZE_PX": str(args.size),
               "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               # the workers run this tree's code, as the producer does (see _shared)
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                           os.environ.get("PYTHONPATH")]))}
        names = [f"bench-turbo-{i}@bench" for i in range(args.workers)]
        argvs = [(name, [sys.executable, "-m", "zq", "worker", "--model", "turbo", "--name",
                         name, "--loglevel", "WARNING"],
                  {**env, "ZQ_HEALTH_DIR": str(workdir / "health" / str(i))})
                 for i, name in enumerate(names)]
        procs = start_workers(stack, argvs, workdir / "logs")
        wait_ready(procs, client, Keys(prefix).worker, args.timeout)

        settings = Settings.from_env(env)
        clients = [Client(settings) for _ in range(args.producers)]

        def job(i: int) -> JobSpec:
            return new_job(JobKind.GENERATE, prompt=f"broker scale {i}", seed=i, steps=1,
                           width=args.size, height=args.size, model="turbo")

        jobs = [job(i) for i in range(args.jobs)]
        shares = [jobs[i::args.producers] for i in range(args.producers)]

        def produce(index: int, share: list[JobSpec]) -> None:
            producer = clients[index]
            for spec in share:
                producer.submit(spec)
            for spec in share:
                record = producer.wait(spec.job_id, args.timeout)
                if record.status is not JobStatus.SUCCEEDED:
                    raise RuntimeError(f"job {spec.job_id} {record.status.value}: "
                                       f"{record.error}")

        idle, busy = measure(client, server.pid, args.idle, lambda: run_threads(shares, produce))
        result = SideResult("zq", args.jobs, idle, busy)

        def one(i: int) -> float:
            spec = job(args.jobs + i)
            clients[0].submit(spec)
            record = clients[0].wait(spec.job_id, args.timeout)
            returned = time.time()
            if record.status is not JobStatus.SUCCEEDED or record.finished_at is None:
                raise RuntimeError(f"wake-up job {spec.job_id} {record.status.value}")
            return returned - record.finished_at

        sequential(args, result, server.port, procs, one)
    return result


def raw_side(args: argparse.Namespace, workdir: Path, task_s: float) -> SideResult:
    """Run the raw Celery side: ``bench/_raw_celery.py`` workers, apply_async, get.

    Each task takes ``task_s`` (zq's worker time per job), so Redis sees the same pace.
    """
    with ExitStack() as stack:
        server, client = stack.enter_context(private_redis(workdir / "redis"))
        os.environ["RAW_BENCH_REDIS_URL"] = server.url
        sys.path.insert(0, str(ROOT / "bench"))
        import _raw_celery as raw

        raw.app.conf.update(raw.raw_config(server.url))
        pythonpath = os.pathsep.join(filter(None, [str(ROOT / "bench"), str(ROOT),
                                                   os.environ.get("PYTHONPATH")]))
        names = [f"raw-{i}@bench" for i in range(args.workers)]
        argvs = [(name, [sys.executable, "-m", "celery", "-A", "_raw_celery", "worker", "-Q",
                         raw.QUEUE, "--pool=solo", "--concurrency=1", "--task-events",
                         "--hostname", name, "--loglevel", "WARNING", "--without-mingle",
                         "--without-gossip"],
                  {"RAW_BENCH_REDIS_URL": server.url, "RAW_BENCH_NAME": name,
                   "RAW_BENCH_TASK_S": str(task_s),
                   "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"})
                 for name in names]
        procs = start_workers(stack, argvs, workdir / "logs")
        wait_ready(procs, client, lambda name: raw.READY_KEY.format(name=name), args.timeout)
        priority = broker_priority(DEFAULT_PRIORITY)
        ids = [uuid.uuid4().hex for _ in range(args.jobs)]
        shares = [ids[i::args.producers] for i in range(args.producers)]

        def produce(index: int, share: list[str]) -> None:
            del index
            results = [raw.noop.apply_async(kwargs={"job_id": i}, queue=raw.QUEUE,
                                            routing_key=raw.QUEUE, priority=priority)
                       for i in share]
            for handle in results:
                handle.get(timeout=args.timeout)

        idle, busy = measure(client, server.pid, args.idle, lambda: run_threads(shares, produce))
        result = SideResult("raw Celery", args.jobs, idle, busy)

        def one(i: int) -> float:
            del i
            ended = raw.noop.apply_async(kwargs={"job_id": uuid.uuid4().hex}, queue=raw.QUEUE,
                                         routing_key=raw.QUEUE, priority=priority
                                         ).get(timeout=args.timeout)
            return time.time() - float(ended)

        sequential(args, result, server.port, procs, one)
    return result


def summary(args: argparse.Namespace, zq: SideResult, raw: SideResult) -> str:
    """The Markdown body of the results section."""
    def row(side: SideResult) -> list[object]:
        net = side.cpu_us(net=True)
        return [side.name, side.jobs, side.busy.seconds, side.jobs / side.busy.seconds,
                side.cpu_us(net=False), net, side.cpu_us(net=False, proc=True),
                side.cpu_us(net=True, proc=True), side.calls(net=False), side.calls(net=True),
                side.calls(net=False, command="evalsha"), side.calls(net=True, command="evalsha"),
                f"{1e6 / net:.0f}" if net > 0 else "n/a"]

    main_table = table(
        ["side", "jobs", "wall s", "jobs/s", "Redis CPU us/job (gross)", "(net of idle)",
         "/proc CPU us/job (gross)", "(net)", "calls/job (gross)", "(net)",
         "evalsha/job (gross)", "(net)",
         "jobs/s per Redis core = GPUs at 1 image/s per Redis core"],
        [row(zq), row(raw)])
    idle_table = table(
        ["side", "idle window s", "Redis CPU ms/s", "calls/s", "calls/s per worker"],
        [[s.name, s.idle.seconds, s.idle.cpu_s / s.idle.seconds * 1000,
          s.idle.total_calls / s.idle.seconds,
          s.idle.total_calls / s.idle.seconds / args.workers] for s in (zq, raw)])
    wake_table = table(
        ["side", "waiter", "jobs", "median ms", "p90 ms"],
        [[zq.name, "Client.wait (push, polling only as a fallback)", len(zq.wake_s),
          statistics.median(zq.wake_s) * 1000, percentile(zq.wake_s, 0.9) * 1000],
         [raw.name, "AsyncResult.get (result backend pub/sub)", len(raw.wake_s),
          statistics.median(raw.wake_s) * 1000, percentile(raw.wake_s, 0.9) * 1000]])

    def commands(side: SideResult) -> str:
        names = sorted(set(side.busy.calls) | set(side.idle.calls),
                       key=lambda c: -side.calls(net=False, command=c))[:TOP_COMMANDS]
        return table(["command", "calls/job (gross)", "idle share/job", "calls/job (net)"],
                     [[c, side.calls(net=False, command=c),
                       side.calls(net=False, command=c) - side.calls(net=True, command=c),
                       side.calls(net=True, command=c)] for c in names])

    ratio = zq.cpu_us(net=True) / raw.cpu_us(net=True)
    gross_ratio = zq.cpu_us(net=False) / raw.cpu_us(net=False)
    redis_version = redis_version_of()
    return (f"{args.jobs} jobs per side ({args.size}x{args.size}, 1 step, tiny turbo "
            f"checkpoint for zq; a no-op task for raw Celery), {args.workers} workers and "
            f"{args.producers} producer threads per side, each side on its own private "
            f"redis-server {redis_version}. Idle window {args.idle:.0f} s per side, scaled to "
            f"the job window's length for the net numbers. What each side does: see the "
            f"docstring of `bench/broker_scale.py`.\n\n{main_table}\n\n"
            f"**zq / raw Celery Redis CPU per job: {ratio:.2f}x net of idle** "
            f"({gross_ratio:.2f}x gross); calls per job {zq.calls(net=True):.1f} against "
            f"{raw.calls(net=True):.1f} net.\n\n"
            f"Idle background (workers up, no jobs):\n\n{idle_table}\n\n"
            f"Wake-up delay, job end to the waiting producer's return, {args.wake} "
            f"sequential jobs:\n\n{wake_table}\n\n"
            f"Top {TOP_COMMANDS} Redis commands per zq job (idle share = the idle window's "
            f"rate over the job window, per job):\n\n{commands(zq)}\n\n"
            f"Top {TOP_COMMANDS} Redis commands per raw Celery task:\n\n{commands(raw)}\n\n"
            f"{traces(args, zq, raw)}"
            "Redis CPU is `INFO cpu` (used_cpu_sys + used_cpu_user); the /proc columns are the "
            "redis-server process's utime + stime (10 ms ticks, so coarser). Calls are "
            "`INFO commandstats`, without the benchmark's own INFO calls. On this 2-core "
            "machine the workers, producers and Redis share the CPU, so wall times and jobs/s "
            "are not a throughput ceiling; CPU and calls per job are the portable numbers.")


def traces(args: argparse.Namespace, zq: SideResult, raw: SideResult) -> str:
    """The MONITOR attribution tables, or nothing without ``--trace``."""
    if not args.trace:
        return ""
    headers = ["issued by", "command", "calls/job"]
    return (f"Who issues them: `MONITOR` over {args.trace} more sequential jobs per side "
            "(after the timed ones), each call attributed to the connection's process "
            "(producer = the benchmark's `Client` / `AsyncResult`, worker = a worker "
            "process); commands that Lua scripts run are listed on their own (commandstats "
            "counts them too), and `evalsha` is named by script. Includes the idle "
            "background of those few seconds.\n\n"
            f"zq:\n\n{table(headers, zq.trace)}\n\n"
            f"raw Celery:\n\n{table(headers, raw.trace)}\n\n")


def redis_version_of() -> str:
    """The version the benchmark's Redis servers reported."""
    return _REDIS_VERSION[0] if _REDIS_VERSION else "unknown"


def main() -> None:
    """Run both sides and write the ``broker_scale`` section of RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=300, help="jobs per side")
    parser.add_argument("--workers", type=int, default=4, help="worker processes per side")
    parser.add_argument("--producers", type=int, default=2, help="producer threads per side")
    parser.add_argument("--size", type=int, default=16, help="image side in pixels (zq)")
    parser.add_argument("--idle", type=float, default=15.0, help="idle window, seconds")
    parser.add_argument("--wake", type=int, default=30, help="sequential jobs timed for the "
                                                             "wake-up delay")
    parser.add_argument("--trace", type=int, default=20, help="sequential jobs traced with "
                        "MONITOR to attribute calls to producer, worker and Lua (0: off)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the RESULTS.md to write")
    parser.add_argument("--label", default="", help="section name suffix: broker_scale_LABEL")
    parser.add_argument("--note", default="", help="a line put at the top of the section")
    parser.add_argument("--raw-task-ms", type=float, default=-1.0,
                        help="milliseconds each raw Celery task takes (default: zq's worker "
                             "time per job, measured in the same run; 0: a true no-op)")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    from worker.tiny_models import TINY_MODEL_SEEDS, make_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="zq-broker-scale-") as tmp:
        workdir = Path(tmp)
        checkpoint = make_tiny_checkpoint(workdir / "models" / "turbo", TINY_MODEL_SEEDS["turbo"])
        zq = zq_side(args, workdir / "zq", checkpoint)
        # A no-op task finishes the run in a fraction of zq's time, and Redis spends more
        # CPU per command when commands trickle in than when they arrive in bursts: pace
        # the raw tasks like zq's renders (worker-seconds per job), unless told otherwise.
        task_s = (zq.busy.seconds * args.workers / zq.jobs if args.raw_task_ms < 0
                  else args.raw_task_ms / 1000)
        raw = raw_side(args, workdir / "raw", task_s)
        args.note = (f"{args.note}\n\n" if args.note else "") + (
            f"Raw Celery tasks each take {task_s * 1000:.1f} ms (zq's worker time per job), "
            "so both sides spread their jobs over about the same time.")
    name = f"broker_scale_{args.label}" if args.label else "broker_scale"
    note = f"{args.note}\n\n" if args.note else ""
    write_section(name, name, note + summary(args, zq, raw), args.results)


if __name__ == "__main__":
    main()
