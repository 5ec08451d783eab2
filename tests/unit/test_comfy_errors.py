"""Workflows the queue cannot run are refused in ComfyUI's exact 400 shape."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from producer.comfy import WorkflowRejected, translate
from tests.unit.comfy_workflows import ARTICLE, Workflow

ERROR_KEYS = {"type", "message", "details", "extra_info"}


def refusal(workflow: object) -> dict[str, Any]:
    with pytest.raises(WorkflowRejected) as caught:
        translate(workflow)
    body = caught.value.body()
    assert set(body) == {"error", "node_errors"}
    assert set(body["error"]) == ERROR_KEYS
    for entry in body["node_errors"].values():
        assert set(entry) == {"errors", "dependent_outputs", "class_type"}
        assert all(set(e) == ERROR_KEYS for e in entry["errors"])
    return body


def node_error(body: dict[str, Any], node_id: str) -> dict[str, Any]:
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["message"] == "Prompt outputs failed validation"
    [found] = body["node_errors"][node_id]["errors"]
    assert isinstance(found, dict)
    return found


def article(**changes: dict[str, Any]) -> Workflow:
    graph = copy.deepcopy(ARTICLE)
    for node_id, inputs in changes.items():
        graph[node_id]["inputs"].update(inputs)
    return graph


def test_unknown_node_class() -> None:
    graph = article()
    graph["8"]["class_type"] = "FancyDecode"
    body = refusal(graph)
    assert body == {"error": {"type": "invalid_prompt",
                              "message": "Cannot execute because node FancyDecode does not exist.",
                              "details": "Node ID '#8'", "extra_info": {}},
                    "node_errors": {}}


def test_missing_class_type() -> None:
    graph: dict[str, Any] = article()
    del graph["8"]["class_type"]
    body = refusal(graph)
    assert body["error"]["message"] == (
        "Cannot execute because a node is missing the class_type property.")


def test_missing_required_input() -> None:
    graph = article()
    del graph["5"]["inputs"]["steps"]
    body = refusal(graph)
    assert node_error(body, "5") == {"type": "required_input_missing",
                                     "message": "Required input is missing", "details": "steps",
                                     "extra_info": {"input_name": "steps"}}
    assert body["node_errors"]["5"]["dependent_outputs"] == ["9"]
    assert body["node_errors"]["5"]["class_type"] == "KSampler"
    assert body["error"]["details"] == "Required input is missing: steps"


def test_dangling_link() -> None:
    found = node_error(refusal(article(**{"5": {"positive": ["99", 0]}})), "5")
    assert found["type"] == "exception_during_inner_validation"
    assert found["extra_info"]["linked_node"] == ["99", 0]
    assert found["extra_info"]["input_name"] == "positive"


def test_cycle() -> None:
    graph = article()
    graph["10"] = {"class_type": "SetLatentNoiseMask",
                   "inputs": {"samples": ["5", 0], "mask": ["11", 0]}}
    graph["11"] = {"class_type": "LoadImageMask", "inputs": {"image": "m.png", "channel": "red"}}
    graph["5"]["inputs"]["latent_image"] = ["10", 0]
    body = refusal(graph)
    assert {"5", "10"} <= set(body["node_errors"])
    found = node_error(body, "10")
    assert found["type"] == "dependency_cycle"
    assert found["message"] == "Dependency cycle detected"


def test_unknown_checkpoint_name() -> None:
    found = node_error(refusal(article(**{"4": {"model_name": "sd_xl_base_1.0.safetensors"}})),
                       "4")
    assert found["type"] == "value_not_in_list"
    assert found["message"] == "Value not in list"
    assert found["details"].startswith("ckpt_name: 'sd_xl_base_1.0.safetensors' not in [")
    assert "z_image_turbo.safetensors" in found["details"]
    assert found["extra_info"]["received_value"] == "sd_xl_base_1.0.safetensors"


def test_bad_sampler() -> None:
    found = node_error(refusal(article(**{"5": {"sampler_name": "dpmpp_3m_sde_gpu"}})), "5")
    assert found["type"] == "value_not_in_list"
    assert found["details"].startswith("sampler_name: 'dpmpp_3m_sde_gpu' not in ['euler'")


def test_bad_scheduler() -> None:
    found = node_error(refusal(article(**{"5": {"scheduler": "karras"}})), "5")
    assert (found["type"], found["extra_info"]["input_name"]) == ("value_not_in_list",
                                                                 "scheduler")


def test_steps_out_of_range() -> None:
    found = node_error(refusal(article(**{"5": {"steps": 500}})), "5")
    assert found == {"type": "value_bigger_than_max", "message": "Value 500 bigger than max of 150",
                     "details": "steps", "extra_info": {
                         "input_name": "steps", "received_value": 500,
                         "input_config": ["INT", {"default": 9, "min": 1, "max": 150, "step": 1}]}}


def test_cfg_below_one() -> None:
    found = node_error(refusal(article(**{"5": {"cfg": 0.5}})), "5")
    assert (found["type"], found["message"]) == ("value_smaller_than_min",
                                                 "Value 0.5 smaller than min of 1.0")


def test_not_a_number() -> None:
    found = node_error(refusal(article(**{"5": {"seed": "abc"}})), "5")
    assert found["type"] == "invalid_input_type"
    assert found["message"] == "Failed to convert an input value to a INT value"


def test_no_output_node() -> None:
    graph = article()
    del graph["9"]
    assert refusal(graph) == {"error": {"type": "prompt_no_outputs",
                                        "message": "Prompt has no outputs", "details": "",
                                        "extra_info": {}},
                              "node_errors": {}}


def test_type_mismatch() -> None:
    found = node_error(refusal(article(**{"9": {"images": ["7", 0]}})), "9")
    assert found["type"] == "return_type_mismatch"
    assert found["details"] == "images, LATENT != IMAGE"


def test_size_limits_come_from_the_job_schema() -> None:
    found = node_error(refusal(article(**{"7": {"width": 4096, "height": 4096}})), "5")
    assert found["type"] == "custom_validation_failed"
    assert found["extra_info"]["input_name"] == "latent_image"
    assert "at most 4194304 pixels" in found["details"]


def test_partial_denoise_on_empty_latent() -> None:
    found = node_error(refusal(article(**{"5": {"denoise": 0.5}})), "5")
    assert found["extra_info"]["input_name"] == "denoise"


def test_edit_checkpoint_without_an_image() -> None:
    found = node_error(refusal(article(**{"4": {"model_name": "z_image_edit.safetensors"}})), "4")
    assert found["type"] == "value_not_in_list"
    assert "z_image_edit" not in found["details"].split(" not in ")[1]


def test_output_not_from_a_decode() -> None:
    graph = article()
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": "x.png"}}
    graph["9"]["inputs"]["images"] = ["10", 0]
    found = node_error(refusal(graph), "9")
    assert found["type"] == "custom_validation_failed"


def test_not_a_workflow() -> None:
    assert refusal(["nope"])["error"]["type"] == "invalid_prompt"


def test_errors_in_several_nodes_are_all_reported() -> None:
    body = refusal(article(**{"5": {"steps": 0}, "7": {"width": 5000}}))
    assert set(body["node_errors"]) == {"5", "7"}
    assert body["error"]["details"].count("\n") == 1
