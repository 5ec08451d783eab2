"""What a translated workflow asks for: planned jobs, not yet submitted anywhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from common.job import JobKind, ModelType


@dataclass(frozen=True)
class PlannedMask:
    """A mask read from an uploaded image's channel, as ComfyUI reads it.

    ``red``/``green``/``blue``: the channel's value is the mask (white = may change).
    ``alpha``: the mask is 1 - alpha, so transparent pixels may change (ComfyUI's
    LoadImage mask output and LoadImageMask's alpha channel both work so).
    """

    image: str
    channel: str


@dataclass(frozen=True)
class PlannedJob:
    """One job a workflow asks for, in the terms of ``common.job.new_job``.

    ``source_image`` and ``mask`` name ComfyUI uploads, which the server resolves to
    storage keys; ``parent_index`` points at an earlier planned job whose id becomes
    this job's ``parent_id``. ``output_nodes`` are the SaveImage/PreviewImage nodes
    showing this job's image (empty for an intermediate pass).
    """

    kind: JobKind
    model: ModelType
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int | None
    height: int | None
    strength: float | None
    sampler_node: str
    source_image: str | None = None
    mask: PlannedMask | None = None
    parent_index: int | None = None
    output_nodes: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)

    def job_fields(self) -> dict[str, Any]:
        """``new_job`` keyword arguments, less ``parent_id``/``source_image``/``mask``.

        Those three are the server's to fill: a parent's job id, and the storage keys
        of the uploads (a mask first cut out of its channel).
        """
        fields: dict[str, Any] = {
            "model": self.model.value, "prompt": self.prompt,
            "negative_prompt": self.negative_prompt, "seed": self.seed, "steps": self.steps,
            "guidance": self.guidance, "tags": dict(self.tags),
        }
        if self.width is not None and self.height is not None:
            fields["width"], fields["height"] = self.width, self.height
        if self.strength is not None:
            fields["strength"] = self.strength
        return fields
