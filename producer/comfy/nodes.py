"""The ComfyUI node classes this server understands, their inputs, and ``/object_info``.

Only the nodes a Z-Image workflow needs are here; a workflow naming any other class is
refused. Numeric limits are zq's job limits (``common.job``), not ComfyUI's wider ones,
so a client's widgets already stop at what a job may ask for.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common.job import MAX_GUIDANCE, MAX_SEED, MAX_SIDE_PX, MAX_STEPS, SIZE_MULTIPLE_PX

MAX_BATCH = 16
"""The most images one latent node may ask for (each becomes its own job)."""

# ComfyUI's cfg mixes as uncond + cfg * (cond - uncond); the Z-Image pipeline as
# cond + guidance * (cond - uncond). So guidance = cfg - 1 and cfg 1 means no guidance.
MIN_CFG = 1.0
MAX_CFG = MAX_GUIDANCE + 1.0

# Our pipelines always run their own flow-matching Euler scheduler (shift 3.0). These
# are the ComfyUI names that describe that same deterministic ODE walk closely enough;
# stochastic or higher-order samplers and other sigma schedules would look different.
SAMPLERS = ("euler", "euler_ancestral", "res_multistep", "dpmpp_2m", "ddim", "uni_pc")
SCHEDULERS = ("simple", "normal", "sgm_uniform")
SCHEDULER_SHIFT = 3.0

CHECKPOINTS = (
    "z_image_turbo.safetensors", "z_image_turbo_bf16.safetensors",
    "z_image_base.safetensors", "z_image_base_bf16.safetensors", "z_image.safetensors",
    "z_image_edit.safetensors", "z_image_edit_bf16.safetensors",
)
TEXT_ENCODERS = ("qwen_3_4b.safetensors", "qwen_3_4b_fp8_mixed.safetensors")
VAES = ("ae.safetensors", "z_image_vae.safetensors")
WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")
MASK_CHANNELS = ("alpha", "red", "green", "blue")
LATENT_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp")
IMAGE_UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "lanczos")
CROPS = ("disabled", "center")
# Any file whose name states its factor (2x, x4...) passes; the worker resizes instead of
# running the model, and the refine that follows redraws the detail.
UPSCALE_MODELS = ("4x-UltraSharp.pth", "RealESRGAN_x4plus.pth", "RealESRGAN_x2plus.pth")

_ZIMAGE = re.compile(r"z[_\-]?image", re.IGNORECASE)
_UPSCALE_FACTOR = re.compile(r"(?:^|[^0-9])([1-8])x|x([1-8])(?:[^0-9]|$)", re.IGNORECASE)


def is_checkpoint(name: str) -> bool:
    """Whether a checkpoint or UNet file name names a Z-Image model we serve."""
    return bool(_ZIMAGE.search(name))


def is_text_encoder(name: str) -> bool:
    """Whether a CLIPLoader file is Z-Image's Qwen3 4B text encoder."""
    return name in TEXT_ENCODERS or bool(re.search(r"qwen_?3[_\-]?4b", name, re.IGNORECASE))


def is_vae(name: str) -> bool:
    """Whether a VAELoader file is the Flux autoencoder Z-Image decodes with."""
    return name in VAES or bool(_ZIMAGE.search(name))


def upscale_factor(name: str) -> int | None:
    """The scale an upscale model's file name announces (``4x-UltraSharp.pth`` -> 4)."""
    found = _UPSCALE_FACTOR.search(name)
    return int(found.group(1) or found.group(2)) if found else None


def _has_factor(name: str) -> bool:
    return upscale_factor(name) is not None


@dataclass(frozen=True)
class InputSpec:
    """One node input: a link type (``MODEL``...), a literal type, or a list of choices.

    ``accept`` widens a choice list: a value it approves passes though not listed (model
    files are matched by name pattern). ``free`` choices (upload names) are not checked
    here at all; the server resolves them.
    """

    name: str
    type: str | tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)
    required: bool = True
    accept: Callable[[str], bool] | None = None
    free: bool = False

    @property
    def is_link(self) -> bool:
        """Whether the input takes a link (an upper-case type name) rather than a literal."""
        return isinstance(self.type, str) and self.type not in LITERAL_TYPES

    def config(self) -> list[Any]:
        """The input's ``[type, options]`` pair as ComfyUI's ``object_info`` shows it."""
        kind: Any = list(self.type) if isinstance(self.type, tuple) else self.type
        return [kind, dict(self.options)] if self.options else [kind]


LITERAL_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN"})


@dataclass(frozen=True)
class NodeClass:
    """A supported ComfyUI node class: inputs, outputs and whether it is an output node."""

    name: str
    inputs: tuple[InputSpec, ...]
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] = ()
    output_node: bool = False
    category: str = ""
    description: str = ""
    aliases: dict[str, str] = field(default_factory=dict)

    def input(self, name: str) -> InputSpec | None:
        """The input called ``name``, or None."""
        return next((spec for spec in self.inputs if spec.name == name), None)


def _int(name: str, default: int, lo: int, hi: int, step: int = 1) -> InputSpec:
    return InputSpec(name, "INT", {"default": default, "min": lo, "max": hi, "step": step})


def _float(name: str, default: float, lo: float, hi: float, step: float = 0.01) -> InputSpec:
    return InputSpec(name, "FLOAT", {"default": default, "min": lo, "max": hi, "step": step})


def _choice(name: str, values: tuple[str, ...], accept: Callable[[str], bool] | None = None,
            required: bool = True) -> InputSpec:
    return InputSpec(name, values, {"default": values[0]}, required=required, accept=accept)


def _link(name: str, type_: str) -> InputSpec:
    return InputSpec(name, type_)


def _size(name: str) -> InputSpec:
    return _int(name, 1024, SIZE_MULTIPLE_PX, MAX_SIDE_PX, SIZE_MULTIPLE_PX)


def _sampler_inputs(seed_name: str) -> tuple[InputSpec, ...]:
    return (
        _link("model", "MODEL"),
        _int(seed_name, 0, 0, MAX_SEED),
        _int("steps", 9, 1, MAX_STEPS),
        _float("cfg", 1.0, MIN_CFG, MAX_CFG, 0.1),
        _choice("sampler_name", SAMPLERS),
        _choice("scheduler", SCHEDULERS),
        _link("positive", "CONDITIONING"),
        _link("negative", "CONDITIONING"),
        _link("latent_image", "LATENT"),
    )


_LATENT = (_size("width"), _size("height"), _int("batch_size", 1, 1, MAX_BATCH))
_UPLOAD = InputSpec("image", (), {"image_upload": True}, free=True)

NODE_CLASSES: dict[str, NodeClass] = {node.name: node for node in (
    NodeClass("CheckpointLoaderSimple", (_choice("ckpt_name", CHECKPOINTS, is_checkpoint),),
              ("MODEL", "CLIP", "VAE"), ("MODEL", "CLIP", "VAE"), category="loaders",
              aliases={"model_name": "ckpt_name"}),
    NodeClass("UNETLoader", (_choice("unet_name", CHECKPOINTS, is_checkpoint),
                             _choice("weight_dtype", WEIGHT_DTYPES)),
              ("MODEL",), ("MODEL",), category="advanced/loaders"),
    NodeClass("CLIPLoader", (_choice("clip_name", TEXT_ENCODERS, is_text_encoder),
                             _choice("type", ("lumina2",)),
                             _choice("device", ("default", "cpu"), required=False)),
              ("CLIP",), ("CLIP",), category="advanced/loaders"),
    NodeClass("VAELoader", (_choice("vae_name", VAES, is_vae),), ("VAE",), ("VAE",),
              category="loaders"),
    NodeClass("ModelSamplingAuraFlow",
              (_link("model", "MODEL"),
               _float("shift", SCHEDULER_SHIFT, SCHEDULER_SHIFT, SCHEDULER_SHIFT)),
              ("MODEL",), ("MODEL",), category="advanced/model",
              description="The pipeline's scheduler shift is fixed at 3.0."),
    NodeClass("CLIPTextEncode",
              (InputSpec("text", "STRING", {"multiline": True, "dynamicPrompts": True}),
               _link("clip", "CLIP")),
              ("CONDITIONING",), ("CONDITIONING",), category="conditioning"),
    NodeClass("ConditioningZeroOut", (_link("conditioning", "CONDITIONING"),),
              ("CONDITIONING",), ("CONDITIONING",), category="advanced/conditioning"),
    NodeClass("EmptyLatentImage", _LATENT, ("LATENT",), ("LATENT",), category="latent"),
    NodeClass("EmptySD3LatentImage", _LATENT, ("LATENT",), ("LATENT",), category="latent/sd3"),
    NodeClass("KSampler", (*_sampler_inputs("seed"), _float("denoise", 1.0, 0.01, 1.0)),
              ("LATENT",), ("LATENT",), category="sampling"),
    NodeClass("KSamplerAdvanced", (
        _choice("add_noise", ("enable",)), *_sampler_inputs("noise_seed"),
        _int("start_at_step", 0, 0, MAX_STEPS - 1), _int("end_at_step", 10000, 1, 10000),
        _choice("return_with_leftover_noise", ("disable",)),
    ), ("LATENT",), ("LATENT",), category="sampling"),
    NodeClass("VAEDecode", (_link("samples", "LATENT"), _link("vae", "VAE")),
              ("IMAGE",), ("IMAGE",), category="latent"),
    NodeClass("VAEEncode", (_link("pixels", "IMAGE"), _link("vae", "VAE")),
              ("LATENT",), ("LATENT",), category="latent"),
    NodeClass("VAEEncodeForInpaint", (_link("pixels", "IMAGE"), _link("vae", "VAE"),
                                      _link("mask", "MASK"), _int("grow_mask_by", 6, 0, 64)),
              ("LATENT",), ("LATENT",), category="latent/inpaint"),
    NodeClass("SetLatentNoiseMask", (_link("samples", "LATENT"), _link("mask", "MASK")),
              ("LATENT",), ("LATENT",), category="latent/inpaint"),
    NodeClass("LoadImage", (_UPLOAD,), ("IMAGE", "MASK"), ("IMAGE", "MASK"), category="image"),
    NodeClass("LoadImageMask", (_UPLOAD, _choice("channel", MASK_CHANNELS)),
              ("MASK",), ("MASK",), category="mask"),
    NodeClass("LatentUpscale", (
        _link("samples", "LATENT"), _choice("upscale_method", LATENT_UPSCALE_METHODS),
        _int("width", 1024, 0, MAX_SIDE_PX, SIZE_MULTIPLE_PX),
        _int("height", 1024, 0, MAX_SIDE_PX, SIZE_MULTIPLE_PX), _choice("crop", CROPS),
    ), ("LATENT",), ("LATENT",), category="latent"),
    NodeClass("LatentUpscaleBy", (_link("samples", "LATENT"),
                                  _choice("upscale_method", LATENT_UPSCALE_METHODS),
                                  _float("scale_by", 1.5, 0.01, 8.0)),
              ("LATENT",), ("LATENT",), category="latent"),
    NodeClass("ImageScale", (
        _link("image", "IMAGE"), _choice("upscale_method", IMAGE_UPSCALE_METHODS),
        _int("width", 1024, 0, MAX_SIDE_PX, 1), _int("height", 1024, 0, MAX_SIDE_PX, 1),
        _choice("crop", CROPS),
    ), ("IMAGE",), ("IMAGE",), category="image/upscaling"),
    NodeClass("ImageScaleBy", (_link("image", "IMAGE"),
                               _choice("upscale_method", IMAGE_UPSCALE_METHODS),
                               _float("scale_by", 1.0, 0.01, 8.0)),
              ("IMAGE",), ("IMAGE",), category="image/upscaling"),
    NodeClass("UpscaleModelLoader",
              (_choice("model_name", UPSCALE_MODELS, _has_factor),),
              ("UPSCALE_MODEL",), ("UPSCALE_MODEL",), category="loaders"),
    NodeClass("ImageUpscaleWithModel", (_link("upscale_model", "UPSCALE_MODEL"),
                                        _link("image", "IMAGE")),
              ("IMAGE",), ("IMAGE",), category="image/upscaling"),
    NodeClass("SaveImage", (_link("images", "IMAGE"),
                            InputSpec("filename_prefix", "STRING", {"default": "ComfyUI"},
                                      required=False)),
              output_node=True, category="image"),
    NodeClass("PreviewImage", (_link("images", "IMAGE"),), output_node=True, category="image"),
)}


def object_info(uploads: list[str] | None = None) -> dict[str, Any]:
    """``GET /object_info`` in ComfyUI's schema, for the supported classes only.

    ``uploads`` fills the image choice lists of LoadImage and LoadImageMask (the names a
    client may pass, as ComfyUI lists its input folder).
    """
    return {name: _class_info(node, uploads or []) for name, node in NODE_CLASSES.items()}


def _class_info(node: NodeClass, uploads: list[str]) -> dict[str, Any]:
    sections: dict[str, dict[str, list[Any]]] = {"required": {}, "optional": {}}
    for spec in node.inputs:
        config = spec.config()
        if spec.free and spec.name == "image":
            config = [sorted(uploads), dict(spec.options)]
        sections["required" if spec.required else "optional"][spec.name] = config
    info: dict[str, Any] = {
        "input": {key: value for key, value in sections.items() if value},
        "input_order": {key: list(value) for key, value in sections.items() if value},
        "output": list(node.outputs),
        "output_is_list": [False] * len(node.outputs),
        "output_name": list(node.output_names),
        "name": node.name,
        "display_name": node.name,
        "description": node.description,
        "python_module": "nodes",
        "category": node.category,
        "output_node": node.output_node,
    }
    return info
