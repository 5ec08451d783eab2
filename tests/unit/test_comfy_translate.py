"""ComfyUI workflows become the planned jobs they describe."""

from __future__ import annotations

import copy

from common.job import JobKind, ModelType
from producer.comfy import PlannedMask, object_info, translate
from tests.unit.comfy_workflows import ARTICLE, TEMPLATE, hires_fix, inpaint, masked_edit


def test_article_workflow_translates_exactly() -> None:
    [job] = translate(ARTICLE)
    assert job.kind is JobKind.GENERATE
    assert job.model is ModelType.TURBO
    assert (job.prompt, job.negative_prompt) == ("a lighthouse at dusk, photo", "blurry")
    assert (job.width, job.height, job.steps, job.seed) == (768, 1024, 8, 123456)
    # ComfyUI's cfg 7 is uncond + 7(cond - uncond) = cond + 6(cond - uncond).
    assert job.guidance == 6.0
    assert job.strength is None and job.source_image is None and job.mask is None
    assert job.output_nodes == ("9",)
    assert job.tags["comfy_positive"] == "3" and job.tags["comfy_negative"] == "6"
    assert job.tags["comfy_cfg"] == "7"


def test_comfyui_template_shape() -> None:
    [job] = translate(TEMPLATE)
    assert (job.model, job.kind) == (ModelType.TURBO, JobKind.GENERATE)
    assert (job.prompt, job.negative_prompt) == ("a red fox", "")
    assert (job.steps, job.guidance, job.seed) == (9, 0.0, 42)
    assert (job.width, job.height) == (1024, 1024)
    assert job.tags["comfy_negative"] == "7"


def test_job_fields_build_a_valid_job() -> None:
    from common.job import new_job

    [job] = translate(ARTICLE)
    spec = new_job(job.kind, **job.job_fields())
    assert (spec.width, spec.height, spec.guidance, spec.model) == (768, 1024, 6.0, "turbo")


def test_masked_edit_with_noise_mask() -> None:
    [job] = translate(masked_edit())
    assert job.kind is JobKind.EDIT
    assert job.model is ModelType.EDIT  # turbo weights, the edit queue
    assert job.strength == 0.4
    assert job.steps == 20  # ComfyUI: 8 steps over the last 0.4 of a 20-step schedule
    assert job.source_image == "room.png"
    assert job.mask == PlannedMask("room-mask.png", "red")
    assert (job.width, job.height) == (None, None)
    assert job.tags["comfy_mask"] == "13"


def test_vae_encode_for_inpaint_uses_the_alpha_mask() -> None:
    [job] = translate(inpaint())
    assert (job.kind, job.strength, job.steps) == (JobKind.EDIT, 1.0, 8)
    assert job.mask == PlannedMask("cut.png", "alpha")
    assert job.source_image == "cut.png"


def test_batch_size_makes_consecutive_seeds() -> None:
    graph = copy.deepcopy(ARTICLE)
    graph["7"]["inputs"]["batch_size"] = 3
    jobs = translate(graph)
    assert [job.seed for job in jobs] == [123456, 123457, 123458]
    assert [job.tags["comfy_batch_index"] for job in jobs] == ["0", "1", "2"]
    assert all(job.output_nodes == ("9",) for job in jobs)


def test_upscale_and_second_sampler_make_a_refine_child() -> None:
    first, second = translate(hires_fix())
    assert (first.kind, first.model, first.output_nodes) == (JobKind.GENERATE, "turbo", ())
    assert (first.width, first.height) == (512, 640)
    assert second.kind is JobKind.REFINE and second.model is ModelType.BASE
    assert second.parent_index == 0
    assert (second.width, second.height) == (768, 960)
    assert (second.strength, second.steps, second.seed, second.guidance) == (0.5, 40, 7, 4.0)
    assert second.output_nodes == ("9",)


def test_image_upscale_model_between_samplers() -> None:
    graph = hires_fix()
    del graph["21"]
    graph["30"] = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["4", 2]}}
    graph["31"] = {"class_type": "UpscaleModelLoader",
                   "inputs": {"model_name": "RealESRGAN_x2plus.pth"}}
    graph["32"] = {"class_type": "ImageUpscaleWithModel",
                   "inputs": {"upscale_model": ["31", 0], "image": ["30", 0]}}
    graph["33"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["32", 0], "vae": ["4", 2]}}
    graph["22"]["inputs"]["latent_image"] = ["33", 0]
    _, second = translate(graph)
    assert second.parent_index == 0 and (second.width, second.height) == (1024, 1280)


def test_ksampler_advanced() -> None:
    graph = masked_edit()
    graph["5"] = {"class_type": "KSamplerAdvanced", "inputs": {
        "add_noise": "enable", "noise_seed": 5, "steps": 20, "cfg": 1.0,
        "sampler_name": "euler", "scheduler": "simple", "start_at_step": 12,
        "end_at_step": 10000, "return_with_leftover_noise": "disable", "model": ["4", 0],
        "positive": ["3", 0], "negative": ["6", 0], "latent_image": ["13", 0]}}
    [job] = translate(graph)
    assert (job.steps, job.strength, job.seed) == (20, 0.4, 5)


def test_output_nodes_sharing_a_sampler_make_one_job() -> None:
    graph = copy.deepcopy(ARTICLE)
    graph["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    [job] = translate(graph)
    assert job.output_nodes == ("9", "10")


def test_object_info_has_comfyui_schema() -> None:
    info = object_info(uploads=["b.png", "a.png"])
    sampler = info["KSampler"]
    assert sampler["input"]["required"]["steps"] == [
        "INT", {"default": 9, "min": 1, "max": 150, "step": 1}]
    assert "euler" in sampler["input"]["required"]["sampler_name"][0]
    assert sampler["output"] == ["LATENT"] and sampler["output_node"] is False
    assert info["SaveImage"]["output_node"] is True
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["a.png", "b.png"]
    assert info["LoadImage"]["output"] == ["IMAGE", "MASK"]
    assert set(sampler) >= {"input", "input_order", "output", "output_is_list", "output_name",
                            "name", "display_name", "description", "python_module",
                            "category", "output_node"}
