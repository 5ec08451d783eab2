"""``zq worker``'s exit status: 0 only for a normal shutdown."""

from __future__ import annotations

from worker.celery_app import EXIT_MODEL_CHANGED
from worker.cli import exit_status


def test_a_normal_shutdown_exits_zero() -> None:
    assert exit_status(0, 0) == 0
    assert exit_status(0, None) == 0


def test_an_error_stop_exits_non_zero() -> None:
    assert exit_status(0, 1) == 1  # Celery's EX_FAILURE: "Unrecoverable error"
    assert exit_status(0, "unexpected") == 1
    assert exit_status(EXIT_MODEL_CHANGED, 0) == EXIT_MODEL_CHANGED
