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

With ``--shards N`` (N > 1) the zq side runs twice in the same run: first on one Redis as
above, then on N private Redis servers, the shards of ``common/shards.py``. The W workers are
split evenly over the shards (worker i serves shard i mod N: its ``ZQ_REDIS_URL``), and the
producers' clients get ``ZQ_REDIS_SHARDS`` naming all of them, so each job lands on shard
``crc32(conversation id) mod N`` (a new job's conversation id is its uuid job id, so they
spread) and is followed there; the ids are made by the producer (``new_id``, as
``Client.generate`` does), so no shard is asked for them first. Every shard is sampled as
above, and its numbers are per job *that landed on it*: Redis CPU (net of its own idle
background), commands, and jobs/s at 100% of its one core. The fleet line adds the shards
up (total net CPU over all jobs; N cores at 100% carry N x 1e6 / that many jobs/s), and the
cross-shard overhead is the sharded run's commands and CPU per job over the one-Redis
run's, command by command. The raw Celery side stays on one Redis.

Run: ``python bench/broker_scale.py -n 300 --workers 4 [--shards N] [--label baseline]``; the
results go to the ``broker_scale`` section of RESULTS.md (``broker_scale_<label>`` with
``--label``).
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
from common.shards import shard_index
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


def combined(windows: list[Window]) -> Window:
    """Several Redis servers' windows over the same span as one: counters added up, the
    span their mean length (they are sampled one right after the other)."""
    calls: dict[str, int] = {}
    for part in windows:
        for name, count in part.calls.items():
            calls[name] = calls.get(name, 0) + count
    return Window(statistics.fmean(w.seconds for w in windows), sum(w.cpu_s for w in windows),
                  sum(w.proc_s for w in windows), calls)


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
    shards: list[SideResult] = field(default_factory=list)  # each shard's, when sharded
    workers: list[int] = field(default_factory=list)  # worker processes per shard

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


def measure(servers: list[tuple[redis.Redis, int]], idle_s: float,
            drive: Callable[[], None]) -> tuple[list[Window], list[Window]]:
    """Each server's idle window (workers up, no jobs) and window around ``drive()``."""
    def sample_all() -> list[Sample]:
        return [sample(client, pid) for client, pid in servers]

    def windows(before: list[Sample], after: list[Sample]) -> list[Window]:
        return [window(b, a) for b, a in zip(before, after, strict=True)]

    time.sleep(2.0)  # let start-up traffic settle
    first = sample_all()
    time.sleep(idle_s)
    idle = windows(first, sample_all())
    before = sample_all()
    drive()
    return idle, windows(before, sample_all())


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


def sequential(args: argparse.Namespace, result: SideResult, ports: list[int],
               procs: list[tuple[str, subprocess.Popen[bytes], Path]],
               one: Callable[[int], float]) -> None:
    """Time ``args.wake`` sequential jobs' wake-up, then trace ``args.trace`` more on every
    Redis in ``ports`` (their calls added up)."""
    result.wake_s = [one(i) for i in range(args.wake)]
    if not args.trace:
        return
    traces = [MonitorTrace(port) for port in ports]
    for i in range(args.trace):
        one(args.wake + i)
    roles = {os.getpid(): "producer", **{proc.pid: "worker" for _, proc, _ in procs}}
    sockets = socket_roles(roles)
    result.trace = attribute([call for trace in traces for call in trace.stop()], sockets,
                             args.trace)


def zq_env(args: argparse.Namespace, workdir: Path, checkpoint: Path,
           prefix: str) -> dict[str, str]:
    """The environment zq's workers and producers share (each worker adds its shard)."""
    return {"ZQ_STORAGE_URL": (workdir / "storage").as_uri(),
            "ZQ_MODEL_TURBO": str(checkpoint), "ZQ_DEVICE": "cpu", "ZQ_KEY_PREFIX": prefix,
            "ZQ_METRICS_PORT": "0", "ZQ_WARMUP_SIZE_PX": str(args.size),
            "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            # the workers run this tree's code, as the producer does (see _shared)
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")]))}


def start_zq_workers(stack: ExitStack, args: argparse.Namespace, workdir: Path,
                     env: dict[str, str], urls: list[str]
                     ) -> list[list[tuple[str, subprocess.Popen[bytes], Path]]]:
    """``args.workers`` zq workers, worker i serving shard i mod N; the processes per shard."""
    argvs = []
    for i in range(args.workers):
        shard = i % len(urls)
        name = (f"bench-turbo-{i}@bench" if len(urls) == 1
                else f"bench-turbo-{i}-s{shard}@bench")
        argvs.append((name, [sys.executable, "-m", "zq", "worker", "--model", "turbo",
                             "--name", name, "--loglevel", "WARNING"],
                      {**env, "ZQ_REDIS_URL": urls[shard],
                       "ZQ_HEALTH_DIR": str(workdir / "health" / str(i))}))
    procs = start_workers(stack, argvs, workdir / "logs")
    return [procs[shard::len(urls)] for shard in range(len(urls))]


def zq_side(args: argparse.Namespace, workdir: Path, checkpoint: Path,
            shards: int = 1) -> SideResult:
    """Run the zq side: real workers, ``Client.submit`` and ``Client.wait``, on ``shards``
    private Redis servers (with more than one, per-shard results in ``shards``)."""
    from producer.client import Client

    with ExitStack() as stack:
        servers = [stack.enter_context(private_redis(workdir / f"redis{'' if k == 0 else k}"))
                   for k in range(shards)]
        urls = [server.url for server, _ in servers]
        prefix = f"zqb{uuid.uuid4().hex[:6]}"
        env = zq_env(args, workdir, checkpoint, prefix)
        per_shard = start_zq_workers(stack, args, workdir, env, urls)
        for (_, client), procs in zip(servers, per_shard, strict=True):
            wait_ready(procs, client, Keys(prefix).worker, args.timeout)

        producer_env = {**env, "ZQ_REDIS_URL": urls[0]}
        if shards > 1:
            producer_env["ZQ_REDIS_SHARDS"] = ",".join(urls)
        settings = Settings.from_env(producer_env)
        clients = [Client(settings) for _ in range(args.producers)]

        def job(i: int) -> JobSpec:
            return new_job(JobKind.GENERATE, prompt=f"broker scale {i}", seed=i, steps=1,
                           width=args.size, height=args.size, model="turbo")

        jobs = [job(i) for i in range(args.jobs)]
        shares = [jobs[i::args.producers] for i in range(args.producers)]

        def produce(index: int, share: list[JobSpec]) -> None:
            producer = clients[index]
            for spec in share:
                producer.submit(spec, new_id=True)  # as Client.generate does
            for spec in share:
                record = producer.wait(spec.job_id, args.timeout)
                if record.status is not JobStatus.SUCCEEDED:
                    raise RuntimeError(f"job {spec.job_id} {record.status.value}: "
                                       f"{record.error}")

        idle, busy = measure([(client, server.pid) for server, client in servers], args.idle,
                             lambda: run_threads(shares, produce))
        result = sharded_result(jobs, idle, busy, [len(procs) for procs in per_shard])

        def one(i: int) -> float:
            spec = job(args.jobs + i)
            clients[0].submit(spec, new_id=True)
            record = clients[0].wait(spec.job_id, args.timeout)
            returned = time.time()
            if record.status is not JobStatus.SUCCEEDED or record.finished_at is None:
                raise RuntimeError(f"wake-up job {spec.job_id} {record.status.value}")
            return returned - record.finished_at

        sequential(args, result, [server.port for server, _ in servers],
                   [proc for procs in per_shard for proc in procs], one)
    return result


def sharded_result(jobs: list[JobSpec], idle: list[Window], busy: list[Window],
                   workers: list[int]) -> SideResult:
    """The zq side's result: one Redis's as is; several shards' added up (the fleet), each
    shard's counted over the jobs that landed on it (crc32 of the conversation id)."""
    count = len(idle)
    if count == 1:
        return SideResult("zq", len(jobs), idle[0], busy[0])
    landed = [0] * count
    for spec in jobs:
        landed[shard_index(spec.conversation_id, count)] += 1
    parts = [SideResult(f"shard {k}", landed[k], idle[k], busy[k]) for k in range(count)]
    return SideResult(f"zq, {count} shards", len(jobs), combined(idle), combined(busy),
                      shards=parts, workers=workers)


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

        idle, busy = measure([(client, server.pid)], args.idle,
                             lambda: run_threads(shares, produce))
        result = SideResult("raw Celery", args.jobs, idle[0], busy[0])

        def one(i: int) -> float:
            del i
            ended = raw.noop.apply_async(kwargs={"job_id": uuid.uuid4().hex}, queue=raw.QUEUE,
                                         routing_key=raw.QUEUE, priority=priority
                                         ).get(timeout=args.timeout)
            return time.time() - float(ended)

        sequential(args, result, [server.port], procs, one)
    return result


def summary(args: argparse.Namespace, zqs: list[SideResult], raw: SideResult) -> str:
    """The Markdown body of the results section: ``zqs`` is the zq side on one Redis, then
    (with ``--shards``) on the shards."""
    sides = [*zqs, raw]

    def row(side: SideResult) -> list[object]:
        net = side.cpu_us(net=True)
        return [side.name, side.jobs, side.busy.seconds, side.jobs / side.busy.seconds,
                side.cpu_us(net=False), net, side.cpu_us(net=False, proc=True),
                side.cpu_us(net=True, proc=True), side.calls(net=False), side.calls(net=True),
                side.calls(net=False, command="evalsha"), side.calls(net=True, command="evalsha"),
                per_core(side)]

    main_table = table(
        ["side", "jobs", "wall s", "jobs/s", "Redis CPU us/job (gross)", "(net of idle)",
         "/proc CPU us/job (gross)", "(net)", "calls/job (gross)", "(net)",
         "evalsha/job (gross)", "(net)",
         "jobs/s per Redis core = GPUs at 1 image/s per Redis core"],
        [row(side) for side in sides])
    idle_table = table(
        ["side", "idle window s", "Redis CPU ms/s", "calls/s", "calls/s per worker"],
        [[s.name, s.idle.seconds, s.idle.cpu_s / s.idle.seconds * 1000,
          s.idle.total_calls / s.idle.seconds,
          s.idle.total_calls / s.idle.seconds / args.workers] for s in sides])
    wake_table = table(
        ["side", "waiter", "jobs", "median ms", "p90 ms"],
        [*[[zq.name, "Client.wait (push, polling only as a fallback)", len(zq.wake_s),
            statistics.median(zq.wake_s) * 1000, percentile(zq.wake_s, 0.9) * 1000]
           for zq in zqs],
         [raw.name, "AsyncResult.get (result backend pub/sub)", len(raw.wake_s),
          statistics.median(raw.wake_s) * 1000, percentile(raw.wake_s, 0.9) * 1000]])

    def commands(side: SideResult) -> str:
        names = sorted(set(side.busy.calls) | set(side.idle.calls),
                       key=lambda c: -side.calls(net=False, command=c))[:TOP_COMMANDS]
        return table(["command", "calls/job (gross)", "idle share/job", "calls/job (net)"],
                     [[c, side.calls(net=False, command=c),
                       side.calls(net=False, command=c) - side.calls(net=True, command=c),
                       side.calls(net=True, command=c)] for c in names])

    def ratio_line(zq: SideResult) -> str:
        ratio = zq.cpu_us(net=True) / raw.cpu_us(net=True)
        gross_ratio = zq.cpu_us(net=False) / raw.cpu_us(net=False)
        name = "zq" if len(zqs) == 1 else f"{zq.name} (all shards)" if zq.shards else zq.name
        return (f"**{name} / raw Celery Redis CPU per job: {ratio:.2f}x net of idle** "
                f"({gross_ratio:.2f}x gross); calls per job {zq.calls(net=True):.1f} against "
                f"{raw.calls(net=True):.1f} net.")

    def command_tables() -> str:
        if len(zqs) == 1:
            return (f"Top {TOP_COMMANDS} Redis commands per zq job (idle share = the idle "
                    f"window's rate over the job window, per job):\n\n{commands(zqs[0])}\n\n")
        return "".join(f"Top {TOP_COMMANDS} Redis commands per job, {zq.name}"
                       f"{', all shards added up' if zq.shards else ''} (idle share = the idle "
                       f"window's rate over the job window, per job):\n\n{commands(zq)}\n\n"
                       for zq in zqs)

    redis_version = redis_version_of()
    sharded = next((zq for zq in zqs if zq.shards), None)
    where = ("each side on its own private "
             f"redis-server {redis_version}" if sharded is None else
             f"each side on its own private redis-server {redis_version}, the sharded zq side "
             f"on {len(sharded.shards)} (one per shard, the workers split "
             f"{'/'.join(map(str, sharded.workers))} over them); the raw Celery side stays on "
             "one Redis")
    return (f"{args.jobs} jobs per side ({args.size}x{args.size}, 1 step, tiny turbo "
            f"checkpoint for zq; a no-op task for raw Celery), {args.workers} workers and "
            f"{args.producers} producer threads per side, {where}. Idle window "
            f"{args.idle:.0f} s per side, scaled to "
            f"the job window's length for the net numbers. What each side does: see the "
            f"docstring of `bench/broker_scale.py`.\n\n{main_table}\n\n"
            + "\n\n".join(ratio_line(zq) for zq in zqs) + "\n\n"
            + (shard_report(zqs[0], sharded) if sharded is not None else "")
            + f"Idle background (workers up, no jobs):\n\n{idle_table}\n\n"
            f"Wake-up delay, job end to the waiting producer's return, {args.wake} "
            f"sequential jobs:\n\n{wake_table}\n\n"
            f"{command_tables()}"
            f"Top {TOP_COMMANDS} Redis commands per raw Celery task:\n\n{commands(raw)}\n\n"
            f"{traces(args, zqs, raw)}"
            "Redis CPU is `INFO cpu` (used_cpu_sys + used_cpu_user); the /proc columns are the "
            "redis-server process's utime + stime (10 ms ticks, so coarser). Calls are "
            "`INFO commandstats`, without the benchmark's own INFO calls. On this 2-core "
            "machine the workers, producers and Redis share the CPU, so wall times and jobs/s "
            "are not a throughput ceiling; CPU and calls per job are the portable numbers.")


def per_core(side: SideResult) -> str:
    """Jobs/s one Redis core at 100% carries at this side's net CPU per job."""
    net = side.cpu_us(net=True)
    return f"{1e6 / net:.0f}" if net > 0 else "n/a"


def shard_report(one: SideResult, sharded: SideResult) -> str:
    """Each shard's cost per job that landed on it, the fleet line, and the cross-shard
    overhead: the sharded run's calls and CPU per job over the one-Redis run's."""
    count = len(sharded.shards)

    def row(name: str, workers: int, side: SideResult) -> list[object]:
        return [name, workers, side.jobs, side.cpu_us(net=False), side.cpu_us(net=True),
                side.calls(net=False), side.calls(net=True),
                side.calls(net=True, command="exists"), per_core(side)]

    shard_table = table(
        ["Redis", "workers", "jobs landed", "Redis CPU us/job (gross)", "(net of idle)",
         "calls/job (gross)", "(net)", "exists/job (net)", "jobs/s at 100% of its core"],
        [row(one.name + " (same run)", sum(sharded.workers), one),
         *[row(part.name, workers, part)
           for part, workers in zip(sharded.shards, sharded.workers, strict=True)]])
    fleet_us, one_us = sharded.cpu_us(net=True), one.cpu_us(net=True)
    names = sorted(set(one.busy.calls) | set(sharded.busy.calls))
    pairs = {name: (one.calls(net=True, command=name), sharded.calls(net=True, command=name))
             for name in names}
    changed = sorted((name for name, (a, b) in pairs.items() if abs(b - a) >= 0.05),
                     key=lambda name: -abs(pairs[name][1] - pairs[name][0]))
    overhead_table = table(["command", "calls/job, 1 Redis", f"calls/job, {count} shards "
                            "added up", "difference"],
                           [[name, *pairs[name], pairs[name][1] - pairs[name][0]]
                            for name in changed])
    fleet_line = (f"**Fleet: {count} x {1e6 / fleet_us:.0f} = {count * 1e6 / fleet_us:.0f} "
                  f"jobs/s at 100% of one core per shard** (= GPUs at 1 image/s on {count} "
                  f"Redis cores; {fleet_us:.2f} us net of Redis CPU per job, all shards added "
                  f"up), against {1e6 / one_us:.0f} on one Redis in the same run: "
                  f"{count * one_us / fleet_us:.2f}x for {count}x the Redis cores."
                  if fleet_us > 0 and one_us > 0 else "Fleet: n/a (no net CPU measured).")
    return (f"Per shard: each shard's counters over the jobs that landed on it (shard "
            f"crc32(conversation id) mod {count}; ids made by the producer, so no "
            "submit-time `EXISTS`), next to the one-Redis zq side of the same run:\n\n"
            f"{shard_table}\n\n"
            f"{fleet_line}\n\n"
            f"Cross-shard overhead: {sharded.calls(net=True) - one.calls(net=True):+.2f} calls "
            f"and {fleet_us - one_us:+.2f} us of Redis CPU per job "
            f"({(fleet_us / one_us - 1) * 100:+.1f}%), all shards added up against one Redis; "
            "commands whose count per job differs by 0.05 or more (net of idle):\n\n"
            f"{overhead_table}\n\n")


def traces(args: argparse.Namespace, zqs: list[SideResult], raw: SideResult) -> str:
    """The MONITOR attribution tables, or nothing without ``--trace``."""
    if not args.trace:
        return ""
    headers = ["issued by", "command", "calls/job"]
    zq_tables = "".join(f"{'zq' if len(zqs) == 1 else zq.name}"
                        f"{' (all shards traced, added up)' if zq.shards else ''}:\n\n"
                        f"{table(headers, zq.trace)}\n\n" for zq in zqs)
    return (f"Who issues them: `MONITOR` over {args.trace} more sequential jobs per side "
            "(after the timed ones), each call attributed to the connection's process "
            "(producer = the benchmark's `Client` / `AsyncResult`, worker = a worker "
            "process); commands that Lua scripts run are listed on their own (commandstats "
            "counts them too), and `evalsha` is named by script. Includes the idle "
            "background of those few seconds.\n\n"
            f"{zq_tables}"
            f"raw Celery:\n\n{table(headers, raw.trace)}\n\n")


def redis_version_of() -> str:
    """The version the benchmark's Redis servers reported."""
    return _REDIS_VERSION[0] if _REDIS_VERSION else "unknown"


def main() -> None:
    """Run both sides and write the ``broker_scale`` section of RESULTS.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--jobs", type=int, default=300, help="jobs per side")
    parser.add_argument("--workers", type=int, default=4, help="worker processes per side")
    parser.add_argument("--shards", type=int, default=1,
                        help="also run the zq side on this many private Redis shards, the "
                             "workers split evenly over them (1: one Redis only)")
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
    if not 1 <= args.shards <= args.workers:
        parser.error("--shards must be between 1 and --workers (a shard needs a worker)")
    os.environ["OMP_NUM_THREADS"] = "1"
    from worker.tiny_models import TINY_MODEL_SEEDS, make_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="zq-broker-scale-") as tmp:
        workdir = Path(tmp)
        checkpoint = make_tiny_checkpoint(workdir / "models" / "turbo", TINY_MODEL_SEEDS["turbo"])
        zqs = [zq_side(args, workdir / "zq", checkpoint)]
        if args.shards > 1:
            zqs[0].name = "zq, 1 Redis"
            zqs.append(zq_side(args, workdir / "zq-sharded", checkpoint, args.shards))
        zq = zqs[0]
        # A no-op task finishes the run in a fraction of zq's time, and Redis spends more
        # CPU per command when commands trickle in than when they arrive in bursts: pace
        # the raw tasks like zq's renders (worker-seconds per job), unless told otherwise.
        task_s = (zq.busy.seconds * args.workers / zq.jobs if args.raw_task_ms < 0
                  else args.raw_task_ms / 1000)
        raw = raw_side(args, workdir / "raw", task_s)
        args.note = (f"{args.note}\n\n" if args.note else "") + (
            f"Raw Celery tasks each take {task_s * 1000:.1f} ms (zq's worker time per job"
            f"{', on one Redis' if args.shards > 1 else ''}), "
            "so both sides spread their jobs over about the same time.")
    name = f"broker_scale_{args.label}" if args.label else "broker_scale"
    note = f"{args.note}\n\n" if args.note else ""
    write_section(name, name, note + summary(args, zqs, raw), args.results)


if __name__ == "__main__":
    main()
