"""Loading a Z-Image checkpoint once per worker process, and the edit seam.

The pipeline class comes from the checkpoint's ``model_index.json``, never from a
constant: a text-to-image checkpoint (turbo, base) serves generate jobs directly and
edit/refine jobs through image-to-image and inpainting pipelines built at load
around the same modules (no reload, no dtype conversion). An instruction-editing checkpoint
(``ZImageOmniPipeline``, not yet released) plugs in behind the same ``Editor`` seam.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import diffusers
import torch
from diffusers import (
    DiffusionPipeline,
    ZImageImg2ImgPipeline,
    ZImageInpaintPipeline,
)
from PIL import Image

from common.errors import ConfigError
from common.job import ModelType
from worker.acceleration import (
    ModelOptions,
    accelerate,
    check_available,
    place,
    resolve_device,
)
from worker.acceleration import describe as describe_options
from worker.model_state import ModelStateGuard

TEXT_TO_IMAGE_CLASSES = {"ZImagePipeline"}
INSTRUCTION_EDIT_CLASSES = {"ZImageOmniPipeline"}
_SNAPSHOT = re.compile(r"[0-9a-f]{40}")

Pipeline = Any
"""A diffusers pipeline: its components are dynamic attributes that type checkers cannot see."""


@dataclass(frozen=True)
class ResolvedSource:
    """A checkpoint on local disk and the revision it is recorded under."""

    requested: str
    path: Path
    revision: str
    pipeline_class: str


class Editor(Protocol):
    """Turns an input image (and optional mask, white = may change) into new latents."""

    def __call__(self, image: Image.Image, mask: Image.Image | None,
                 **pipeline_kwargs: Any) -> torch.Tensor:
        """Run the edit; ``pipeline_kwargs`` are the shared diffusers call arguments."""


class DerivedEditor:
    """Image-to-image without a mask, inpainting with one, on text-to-image weights.

    Both pipelines are built once, when the model loads, around the very modules the
    loaded pipeline holds: nothing is converted or copied (``from_pipe`` would convert
    the shared modules to its own dtype, float32 unless told otherwise).
    """

    def __init__(self, base: Pipeline) -> None:
        self.img2img = derive(ZImageImg2ImgPipeline, base)
        self.inpaint = derive(ZImageInpaintPipeline, base)

    def __call__(self, image: Image.Image, mask: Image.Image | None,
                 **pipeline_kwargs: Any) -> torch.Tensor:
        """Edit with the derived pipeline that fits the job."""
        if mask is None:
            out = self.img2img(image=image, **pipeline_kwargs)
        else:
            out = self.inpaint(image=image, mask_image=mask, **pipeline_kwargs)
        latents: torch.Tensor = out.images
        return latents


def derive(pipeline_class: type[Any], base: Pipeline) -> Pipeline:
    """A pipeline of ``pipeline_class`` sharing ``base``'s components as they are."""
    wanted = inspect.signature(pipeline_class.__init__).parameters
    components = {name: part for name, part in base.components.items() if name in wanted}
    return _quiet(pipeline_class(**components))


@dataclass
class LoadedModel:
    """A warm pipeline plus what the manifest must say about it."""

    model: ModelType
    source: ResolvedSource
    pipeline: Pipeline
    editor: Editor
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    guard: ModelStateGuard
    options: ModelOptions = field(default_factory=ModelOptions)
    versions: dict[str, str] = field(default_factory=dict)

    @property
    def size_multiple(self) -> int:
        """Width and height must be multiples of this (16 for Z-Image's VAE)."""
        return int(self.pipeline.vae_scale_factor) * 2

    def describe(self) -> dict[str, Any]:
        """The model part of a provenance manifest."""
        return {
            "type": self.model.value,
            "source": self.source.requested,
            "revision": self.source.revision,
            "pipeline_class": self.source.pipeline_class,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            **describe_options(self.options),
            "parameter_bytes": self.guard.parameter_bytes(),
        }


def resolve_source(source: str) -> ResolvedSource:
    """Find a checkpoint on disk: a local directory, or a hub id (``id`` or ``id@revision``).

    Hub ids go through the Hugging Face cache (honouring ``HF_HUB_OFFLINE``), so the
    recorded revision is the snapshot's commit hash.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        revision = path.name if _SNAPSHOT.fullmatch(path.name) else _content_revision(path)
    else:
        from huggingface_hub import snapshot_download

        repo_id, _, wanted = source.partition("@")
        try:
            path = Path(snapshot_download(repo_id, revision=wanted or None))
        except Exception as exc:
            raise ConfigError(f"model source {source!r} is neither a directory nor a "
                              f"reachable hub checkpoint: {exc}") from exc
        revision = path.name
    index = path / "model_index.json"
    if not index.is_file():
        raise ConfigError(f"model source {source!r} has no model_index.json at {path}")
    class_name = json.loads(index.read_text()).get("_class_name", "")
    return ResolvedSource(source, path, revision, str(class_name))


def _content_revision(path: Path) -> str:
    """A stable id for an unversioned local checkpoint: a hash of its configs."""
    digest = hashlib.sha256()
    for config in sorted(path.rglob("*.json")):
        digest.update(config.relative_to(path).as_posix().encode())
        digest.update(config.read_bytes())
    return "local-" + digest.hexdigest()[:16]


def load_model(model: ModelType, source: str, options: ModelOptions | None = None
               ) -> LoadedModel:
    """Load the checkpoint for ``model`` once; the worker keeps it for its whole life.

    The model's guard holds the footprint of its weights as served (after placement,
    FP8 and compile), which every later job is checked against.
    """
    options = options or ModelOptions()
    started = time.perf_counter()
    resolved = resolve_source(source)
    device, dtype = resolve_device(options)
    check_available(options, device, dtype)
    pipeline = _quiet(DiffusionPipeline.from_pretrained(  # type: ignore[no-untyped-call]
        resolved.path, dtype=dtype))
    place(pipeline, options, device)
    accelerate(pipeline, options)
    editor = _editor_for(resolved, pipeline)
    return LoadedModel(
        model=model, source=resolved, pipeline=pipeline, editor=editor, device=device,
        dtype=dtype, load_seconds=time.perf_counter() - started,
        guard=ModelStateGuard(pipeline), options=options, versions=library_versions(),
    )


def _editor_for(resolved: ResolvedSource, pipeline: Pipeline) -> Editor:
    if resolved.pipeline_class in TEXT_TO_IMAGE_CLASSES:
        return DerivedEditor(pipeline)
    if resolved.pipeline_class in INSTRUCTION_EDIT_CLASSES:
        return InstructionEditor(pipeline)
    served = sorted(TEXT_TO_IMAGE_CLASSES | INSTRUCTION_EDIT_CLASSES)
    raise ConfigError(f"{resolved.requested}: pipeline class {resolved.pipeline_class!r} is not "
                      f"a Z-Image pipeline this worker can serve ({served})")


@dataclass
class InstructionEditor:
    """An instruction-editing checkpoint: the image goes in as a condition, not a start."""

    pipeline: Pipeline

    def __call__(self, image: Image.Image, mask: Image.Image | None,
                 **pipeline_kwargs: Any) -> torch.Tensor:
        """Edit by instruction; a mask is not supported by this pipeline class."""
        if mask is not None:
            raise ConfigError("this edit checkpoint does not take masks")
        pipeline_kwargs.pop("strength", None)
        latents: torch.Tensor = self.pipeline(image=[image], **pipeline_kwargs).images
        return latents


def library_versions() -> dict[str, str]:
    """Versions that decide whether an image can be reproduced bit for bit."""
    import transformers

    from common import __version__

    return {
        "zimage-queue": __version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "cuda": str(torch.version.cuda),
    }


def _quiet(pipeline: Pipeline) -> Pipeline:
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


ProgressCallback = Callable[[int, int], bool]
"""Called after each denoising step with (steps done, total); returns True to stop."""
