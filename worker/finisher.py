"""The hand-off: one background thread stores finished renders while the GPU renders on.

Encoding an image, two PUTs, the record update and the release of children take tens
of milliseconds of CPU and network per job; done inline they leave the GPU idle. The
worker's job thread hands each rendered job to this thread through a small bounded
queue and goes back to the broker for the next message: job N+1 denoises while job N
is stored. The bound keeps memory flat and pushes back when storage is slow (the job
thread waits for room instead of piling up rendered images).

The guarantees do not move: a handed-off job still holds its lease (renewed by the
liveness thread) until its record is finished, so a worker killed during the hand-off
loses nothing: the lease runs out and another worker renders the job again.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("zq.worker")

Item = TypeVar("Item")


class Finisher(threading.Thread, Generic[Item]):
    """Runs ``finish(item)`` for each handed-off item, one at a time, in order."""

    def __init__(self, finish: Callable[[Item], None], depth: int = 1) -> None:
        super().__init__(name="zq-finisher", daemon=True)
        self.finish = finish
        self.items: queue.Queue[Item | None] = queue.Queue(maxsize=depth)
        self.closed = False

    def hand_off(self, item: Item) -> None:
        """Queue ``item``; blocks while ``depth`` items already wait."""
        if self.closed:
            raise RuntimeError("the finisher is closed")
        self.items.put(item)

    def run(self) -> None:
        """Finish items until closed; an item that raises is logged, never fatal."""
        while True:
            item = self.items.get()
            try:
                if item is None:
                    return
                self.finish(item)
            except Exception:
                log.exception("finishing a job failed")
            finally:
                self.items.task_done()

    def drain(self, timeout_s: float) -> bool:
        """Wait until every handed-off item is finished; False if ``timeout_s`` ran out."""
        done = threading.Event()

        def wait() -> None:
            self.items.join()
            done.set()

        threading.Thread(target=wait, name="zq-finisher-drain", daemon=True).start()
        return done.wait(timeout_s)

    def close(self, timeout_s: float) -> bool:
        """Finish what was handed off, then stop the thread; False if it did not finish."""
        self.closed = True
        if not self.is_alive():
            return self.items.unfinished_tasks == 0
        drained = self.drain(timeout_s)
        if drained:
            self.items.put(None)
            self.join(timeout_s)
        return drained
