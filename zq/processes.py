"""Helpers for the local servers zq starts (the demo's Redis) and the tests' services."""

from __future__ import annotations

import ctypes
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that kills the child when its parent dies (a SIGKILLed pytest).

    PDEATHSIG fires when the *thread* that forked exits, so it is only used from the
    main thread; elsewhere None (no such guarantee).
    """
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


def spawn(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its output appended to ``log``, dying with this process."""
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                preexec_fn=die_with_parent())


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited; a zombie (state Z in /proc) counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return any(line.startswith("State:") and "Z" in line.split()[1:2]
               for line in status.splitlines())


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], timeout_s: float = 10.0,
         graceful: bool = True) -> None:
    """SIGTERM (or straight SIGKILL), then SIGKILL if it lingers; reaps the child.

    Raises RuntimeError if the process is still there after SIGKILL and ``timeout_s``.
    """
    if proc.poll() is None:
        if graceful:
            proc.terminate()
            try:
                proc.wait(timeout_s)
                return
            except subprocess.TimeoutExpired:
                pass
        proc.kill()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        deadline = time.monotonic() + timeout_s
        while not process_gone(proc.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.args!r} (pid {proc.pid}) survived SIGKILL") from None
            time.sleep(0.02)
