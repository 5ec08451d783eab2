"""Start a throw-away single-node Ceph RGW (S3) for integration tests and benchmarks.

One monitor, one memstore OSD and one radosgw, all bound to 127.0.0.1 with free ports and
every file (config, mon store, OSD store, logs, sockets) under ``workdir``.  The OSD keeps its
data in memory, so stopping the server throws everything away.  Authentication between the
daemons is off; S3 clients still sign with SigV4 against the access/secret key created here.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from zq.processes import free_port, spawn, stop

# fmt: off
REQUIRED_BINARIES = (
    "ceph-mon", "ceph-osd", "radosgw", "ceph-authtool", "monmaptool", "radosgw-admin", "ceph",
)
# fmt: on
START_TIMEOUT_S = 60.0
CLI_TIMEOUT_S = 20

_CONF = """\
[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
mon allow pool size one = true
mon warn on pool no redundancy = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
# Start-up ~13 s -> <1 s, and no ~2 s stalls on the first bucket/put.
paxos propose interval = 0.05
paxos min wait = 0.01
debug osd = 0/5
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
pid file = {d}/run/$name.pid
keyring = {d}/keyring
osd data = {d}/osd/$id
mon data = {d}/mon/$id
[mon]
mon data avail warn = 1
mon data avail crit = 0
[osd]
osd objectstore = memstore
memstore device bytes = {memstore_bytes}
[client]
# radosgw hangs at start-up without crc (the default, secure, needs cephx).
ms mon client mode = crc secure
# A client that connects before the OSD is up can miss its boot map and then waits for the
# next objecter tick (5 s by default): seen in ~1 start of 10 without this.
objecter tick interval = 0.25
[client.rgw.gw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {d}/rgw
"""


def rgw_available() -> bool:
    """Return True when every Ceph binary needed by :func:`start_rgw` is on PATH."""
    return all(shutil.which(b) for b in REQUIRED_BINARIES)


@dataclass
class RgwServer:
    """A running single-node Ceph with an S3 endpoint; call :meth:`stop` when done."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str
    workdir: Path
    startup_s: float
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    def stop(self, keep_files: bool = False) -> None:
        """Kill radosgw, the OSD and the monitor by PID and wait until they are gone.

        The OSD keeps its data in memory, so SIGKILL loses nothing that a graceful stop would
        keep (radosgw takes ~5 s to honour SIGTERM).  Unless ``keep_files``, the cluster's
        directory (config, mon store, logs) is deleted.  Safe to call more than once.
        """
        for name in ("rgw", "osd", "mon"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                stop(proc, graceful=False)
        if not keep_files:
            shutil.rmtree(self.workdir, ignore_errors=True)


def start_rgw(workdir: Path, *, memstore_bytes: int = 1 << 30) -> RgwServer:
    """Start mon + memstore OSD + radosgw under ``workdir`` and return once S3 answers.

    Everything goes under ``workdir / "ceph"`` (created here, deleted by
    :meth:`RgwServer.stop`).  Takes ~1 s.  Raises RuntimeError (with the tails of the daemon
    logs, which are then kept) if start-up fails or times out.
    """
    t0 = time.monotonic()
    d = Path(workdir).resolve() / "ceph"
    for sub in ("run", "log", "mon/a", "osd/0", "rgw"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    mon_port, rgw_port = free_port(), free_port()
    fsid = str(uuid.uuid4())
    conf = d / "ceph.conf"
    # fmt: off
    conf.write_text(_CONF.format(fsid=fsid, mon_port=mon_port, rgw_port=rgw_port, d=d,
                                 memstore_bytes=memstore_bytes))
    server = RgwServer(endpoint_url=f"http://127.0.0.1:{rgw_port}", access_key="zqtestaccess",
                       secret_key=uuid.uuid4().hex, region="us-east-1", workdir=d, startup_s=0.0)
    c = ["-c", str(conf)]
    keyring, monmap = str(d / "keyring"), str(d / "monmap")
    try:
        _run(d, ["ceph-authtool", "--create-keyring", keyring, "--gen-key", "-n", "mon.",
                 "--cap", "mon", "allow *"])
        _run(d, ["monmaptool", "--create", "--fsid", fsid, "--addv", "a",
                 f"[v2:127.0.0.1:{mon_port}]", monmap])
        _run(d, ["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", monmap])
        server.procs["mon"] = _spawn(d, "mon", ["ceph-mon", *c, "-f", "-i", "a"])
        osd_uuid = str(uuid.uuid4())
        _ceph(d, c, ["osd", "new", osd_uuid, "0"])
        _run(d, ["ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid])
        server.procs["osd"] = _spawn(d, "osd", ["ceph-osd", *c, "-f", "-i", "0"])
        # Waits for the OSD to come up, then creates the RGW pools and the user; radosgw
        # starts after it so that only one client creates the pools.
        _run(d, ["radosgw-admin", *c, "-n", "client.admin", "user", "create", "--uid", "zqtest",
                 "--display-name", "zq test", "--access-key", server.access_key,
                 "--secret-key", server.secret_key])
        server.procs["rgw"] = _spawn(d, "rgw", ["radosgw", *c, "-f", "-n", "client.rgw.gw"])
        _wait_http(d, server)
        # fmt: on
    except BaseException:
        server.stop(keep_files=True)  # leave the logs under workdir for a post-mortem
        raise
    server.startup_s = time.monotonic() - t0
    return server


def _log_tails(d: Path, lines: int = 25) -> str:
    out = []
    for log in sorted((d / "log").glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log} (last {len(tail)} lines) ---\n" + "\n".join(tail))
    return "\n".join(out)


def _run(d: Path, cmd: list[str], timeout: float = CLI_TIMEOUT_S) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"timed out after {timeout}s: {cmd}\n{_log_tails(d)}") from exc
    if res.returncode != 0:
        raise RuntimeError(
            f"failed (rc={res.returncode}): {cmd}\n{res.stdout}{res.stderr}\n{_log_tails(d)}"
        )
    return res.stdout


def _ceph(d: Path, conf_args: list[str], args: list[str]) -> str:
    # The ceph CLI can hang for ever on a bad cluster: bound it twice.
    cmd = [
        "timeout",
        str(CLI_TIMEOUT_S),
        "ceph",
        *conf_args,
        "--connect-timeout",
        str(CLI_TIMEOUT_S - 5),
        *args,
    ]
    return _run(d, cmd, timeout=CLI_TIMEOUT_S + 5)


def _spawn(d: Path, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
    return spawn(cmd, d / "log" / f"{name}.stdout.log")


def _wait_http(d: Path, server: RgwServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for name, proc in server.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"ceph {name} exited rc={proc.returncode}\n{_log_tails(d)}")
        try:
            with urllib.request.urlopen(server.endpoint_url, timeout=2) as resp:
                resp.read()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer (e.g. 403 for anonymous) means the frontend is serving
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"radosgw did not answer within {START_TIMEOUT_S}s\n{_log_tails(d)}")
