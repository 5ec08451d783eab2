"""The worker's Celery consumer: every task message passes the intake before Celery sees it.

Celery drops some malformed messages (an unknown task, another serializer it was told
not to accept) and crashes on others (``Unrecoverable error: TypeError`` for a body of
``null``), giving the message back for the next worker to crash on. Here a message is
first read by ``worker.intake``; one that cannot run becomes a dead letter and is acked.
Celery's own refusal callbacks dead-letter too, and anything that escapes Celery before
the task started is caught as a last resort: no message can stop a worker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu.message import Message
from vine import promise

from common.deadletters import BODY, CONTENT_TYPE, REJECTED, UNKNOWN_TASK
from worker.intake import Intake, Refusal


def _intake() -> Intake:
    from worker.celery_app import runtime

    return runtime().intake


class Consumer(CeleryConsumer):  # type: ignore[misc]
    """Celery's consumer with a gate in front of its task handler."""

    def create_task_handler(self, promise: Any = promise) -> Callable[[Message], Any]:
        """Celery's handler, behind ``Intake.admit``."""
        handle = super().create_task_handler(promise)

        def on_task_received(message: Message) -> Any:
            intake = _intake()
            if not intake.admit(message):
                return None
            try:
                return handle(message)
            except self.connection_errors:
                raise
            except Exception as exc:
                # Raised before the task ran (the solo pool runs it inside ``handle``, and a
                # task that ran has acked or rejected its message): Celery could not take it.
                if message.acknowledged:
                    raise
                intake.refuse(message, Refusal(REJECTED, f"{type(exc).__name__}: {exc}"))
                return None

        return on_task_received

    # Celery's own refusals: dead letters, never a silent drop or a redelivery loop.
    def on_unknown_message(self, body: Any, message: Message) -> None:
        """A message that names no task."""
        self._refuse(message, Refusal(BODY, "no task named in the message"))

    def on_unknown_task(self, body: Any, message: Message, exc: Exception) -> None:
        """A task this worker does not have."""
        self._refuse(message, Refusal(UNKNOWN_TASK, f"{type(exc).__name__}: {exc}"))

    def on_invalid_task(self, body: Any, message: Message, exc: Exception) -> None:
        """A task message Celery cannot read (a bad ETA, a refused serializer...)."""
        self._refuse(message, Refusal(REJECTED, f"{type(exc).__name__}: {exc}"))

    def on_decode_error(self, message: Message, exc: Exception) -> None:
        """A body kombu cannot decode."""
        self._refuse(message, Refusal(CONTENT_TYPE, f"{type(exc).__name__}: {exc}"))

    def _refuse(self, message: Message, refusal: Refusal) -> None:
        if not message.acknowledged:
            _intake().refuse(message, refusal)
