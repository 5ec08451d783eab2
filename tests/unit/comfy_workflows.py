"""ComfyUI API-format workflows used by the comfy translation tests."""

from __future__ import annotations

import copy
from typing import Any

Workflow = dict[str, dict[str, Any]]

ARTICLE: Workflow = {
    "4": {"class_type": "CheckpointLoaderSimple",
          "inputs": {"model_name": "z_image_turbo.safetensors"}},
    "3": {"class_type": "CLIPTextEncode",
          "inputs": {"text": "a lighthouse at dusk, photo", "clip": ["4", 1]}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 0]}},
    "7": {"class_type": "EmptyLatentImage",
          "inputs": {"width": 768, "height": 1024, "batch_size": 1}},
    "5": {"class_type": "KSampler", "inputs": {
        "seed": 123456, "steps": 8, "cfg": 7.0, "sampler_name": "euler",
        "scheduler": "normal", "denoise": 1.0, "model": ["4", 0], "positive": ["3", 0],
        "negative": ["6", 0], "latent_image": ["7", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "zq"}},
}

TEMPLATE: Workflow = {
    "16": {"class_type": "UNETLoader", "inputs": {"unet_name": "z_image_turbo_bf16.safetensors",
                                                  "weight_dtype": "default"}},
    "18": {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_3_4b.safetensors",
                                                  "type": "lumina2", "device": "default"}},
    "17": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
    "11": {"class_type": "ModelSamplingAuraFlow", "inputs": {"shift": 3, "model": ["16", 0]}},
    "13": {"class_type": "EmptySD3LatentImage",
           "inputs": {"width": 1024, "height": 1024, "batch_size": 1}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox", "clip": ["18", 0]}},
    "7": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["6", 0]}},
    "3": {"class_type": "KSampler", "inputs": {
        "seed": 42, "steps": 9, "cfg": 1, "sampler_name": "res_multistep",
        "scheduler": "simple", "denoise": 1, "model": ["11", 0], "positive": ["6", 0],
        "negative": ["7", 0], "latent_image": ["13", 0]}},
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["17", 0]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "z-image",
                                                "images": ["8", 0]}},
}


def masked_edit() -> Workflow:
    """The article's graph editing an upload at denoise 0.4 under a noise mask."""
    graph = copy.deepcopy(ARTICLE)
    del graph["7"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "room.png"}}
    graph["11"] = {"class_type": "LoadImageMask",
                   "inputs": {"image": "room-mask.png", "channel": "red"}}
    graph["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}}
    graph["13"] = {"class_type": "SetLatentNoiseMask",
                   "inputs": {"samples": ["12", 0], "mask": ["11", 0]}}
    graph["5"]["inputs"].update(denoise=0.4, latent_image=["13", 0], cfg=1.0, steps=8)
    return graph


def inpaint() -> Workflow:
    """VAEEncodeForInpaint with LoadImage's own alpha mask."""
    graph = copy.deepcopy(ARTICLE)
    del graph["7"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "cut.png"}}
    graph["12"] = {"class_type": "VAEEncodeForInpaint", "inputs": {
        "pixels": ["10", 0], "vae": ["4", 2], "mask": ["10", 1], "grow_mask_by": 6}}
    graph["5"]["inputs"]["latent_image"] = ["12", 0]
    return graph


def hires_fix() -> Workflow:
    """A first pass, a latent upscale x1.5 and a second pass on the base model."""
    graph = copy.deepcopy(ARTICLE)
    graph["7"]["inputs"].update(width=512, height=640)
    graph["20"] = {"class_type": "CheckpointLoaderSimple",
                   "inputs": {"ckpt_name": "z_image_base.safetensors"}}
    graph["21"] = {"class_type": "LatentUpscaleBy", "inputs": {
        "samples": ["5", 0], "upscale_method": "nearest-exact", "scale_by": 1.5}}
    graph["22"] = {"class_type": "KSampler", "inputs": {
        "seed": 7, "steps": 20, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
        "denoise": 0.5, "model": ["20", 0], "positive": ["3", 0], "negative": ["6", 0],
        "latent_image": ["21", 0]}}
    graph["8"]["inputs"]["samples"] = ["22", 0]
    return graph
