"""A multi-turn image conversation: each turn chains onto the latest one."""

from __future__ import annotations

import uuid
from typing import Any

from common.errors import InvalidJob
from producer.client import Client, ImageInput, JobHandle


class Conversation:
    """Turns of one conversation, submitted through a ``Client``.

    The first ``say`` generates (turbo); each later ``say`` edits the latest turn
    (edit); ``refine`` redraws the latest turn on the base model. Turns can be
    submitted before earlier ones finish: the queue runs each after its parent.
    """

    def __init__(self, client: Client, conversation_id: str | None = None,
                 turns: list[JobHandle] | None = None, **defaults: Any) -> None:
        self.client = client
        self.conversation_id = conversation_id or uuid.uuid4().hex
        self.turns: list[JobHandle] = list(turns or [])
        self.defaults = defaults

    @property
    def latest(self) -> JobHandle | None:
        """The turn the next ``say`` builds on, if any."""
        return self.turns[-1] if self.turns else None

    def say(self, text: str, mask: ImageInput | None = None, **options: Any) -> JobHandle:
        """Add a turn: generate if there is nothing yet, else edit the latest turn."""
        merged = {**self.defaults, "conversation_id": self.conversation_id, **options}
        if self.latest is None:
            if mask is not None:
                raise InvalidJob("mask", "the first turn has no image to mask")
            handle = self.client.generate(text, **merged)
        else:
            handle = self.client.edit(text, parent=self.latest.job_id, mask=mask, **merged)
        self.turns.append(handle)
        return handle

    def refine(self, prompt: str | None = None, **options: Any) -> JobHandle:
        """Add a high-quality redraw of the latest turn (base model)."""
        if self.latest is None:
            raise InvalidJob("parent_id", "refine needs an earlier turn to redraw")
        merged = {**self.defaults, "conversation_id": self.conversation_id, **options}
        handle = self.client.refine(parent=self.latest.job_id, prompt=prompt, **merged)
        self.turns.append(handle)
        return handle

    def branch(self, from_turn: int) -> Conversation:
        """A sibling conversation (same id) whose next turn builds on turn ``from_turn``."""
        if not 0 <= from_turn < len(self.turns):
            raise IndexError(f"from_turn: between 0 and {len(self.turns) - 1}, got {from_turn}")
        return Conversation(self.client, self.conversation_id, self.turns[: from_turn + 1],
                            **self.defaults)
