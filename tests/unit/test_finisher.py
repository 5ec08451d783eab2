"""The finisher thread: in order, bounded, never killed by an item, drained on close."""

from __future__ import annotations

import threading

import pytest

from worker.finisher import Finisher


def test_items_are_finished_in_order_and_close_drains_them() -> None:
    done: list[int] = []
    finisher: Finisher[int] = Finisher(done.append, depth=4)
    finisher.start()
    for item in range(20):
        finisher.hand_off(item)
    assert finisher.close(timeout_s=10)
    assert done == list(range(20))
    assert not finisher.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        finisher.hand_off(99)


def test_hand_off_blocks_while_the_queue_is_full() -> None:
    release = threading.Event()
    started = threading.Event()

    def slow(item: int) -> None:
        started.set()
        release.wait(10)

    finisher: Finisher[int] = Finisher(slow, depth=1)
    finisher.start()
    finisher.hand_off(1)  # taken by the thread, which now waits
    assert started.wait(10)
    finisher.hand_off(2)  # fills the one slot
    third_queued = threading.Event()

    def hand_third() -> None:
        finisher.hand_off(3)
        third_queued.set()

    threading.Thread(target=hand_third, daemon=True).start()
    assert not third_queued.wait(0.3), "a full hand-off must make the job thread wait"
    assert not finisher.drain(0.1)
    release.set()
    assert third_queued.wait(10)
    assert finisher.close(timeout_s=10)


def test_an_item_that_raises_is_logged_and_the_thread_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    done: list[int] = []

    def finish(item: int) -> None:
        if item == 1:
            raise ValueError("bad item")
        done.append(item)

    finisher: Finisher[int] = Finisher(finish)
    finisher.start()
    for item in range(3):
        finisher.hand_off(item)
    assert finisher.close(timeout_s=10)
    assert done == [0, 2]
    assert "finishing a job failed" in caplog.text and "bad item" in caplog.text


def test_close_reports_a_finish_that_outlasts_the_timeout() -> None:
    release = threading.Event()
    finisher: Finisher[int] = Finisher(lambda item: release.wait(10) and None)
    finisher.start()
    finisher.hand_off(1)
    assert finisher.close(timeout_s=0.2) is False
    release.set()
    assert finisher.drain(10)
