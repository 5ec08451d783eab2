"""ComfyUI's refusal shapes: one error dict per problem, gathered into a 400 body.

The shapes (``type``, ``message``, ``details``, ``extra_info``) and messages follow
ComfyUI's own ``validate_prompt``/``validate_inputs``, so a ComfyUI client shows our
refusals exactly as it shows its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

ErrorDict = dict[str, Any]
"""One ComfyUI error: ``{"type", "message", "details", "extra_info"}``."""


def error(type_: str, message: str, details: str = "",
          extra_info: Mapping[str, Any] | None = None) -> ErrorDict:
    """An error dict in ComfyUI's shape."""
    return {"type": type_, "message": message, "details": details,
            "extra_info": dict(extra_info or {})}


def required_input_missing(name: str) -> ErrorDict:
    """A required input is absent from a node's ``inputs``."""
    return error("required_input_missing", "Required input is missing", name,
                 {"input_name": name})


def value_smaller_than_min(name: str, config: list[Any], value: object,
                           minimum: object) -> ErrorDict:
    """A number is below its input's ``min``."""
    return error("value_smaller_than_min", f"Value {value} smaller than min of {minimum}", name,
                 {"input_name": name, "input_config": config, "received_value": value})


def value_bigger_than_max(name: str, config: list[Any], value: object,
                          maximum: object) -> ErrorDict:
    """A number is above its input's ``max``."""
    return error("value_bigger_than_max", f"Value {value} bigger than max of {maximum}", name,
                 {"input_name": name, "input_config": config, "received_value": value})


def value_not_in_list(name: str, config: list[Any] | None, value: object,
                      allowed: Iterable[str]) -> ErrorDict:
    """A choice input holds a value outside its list."""
    return error("value_not_in_list", "Value not in list",
                 f"{name}: '{value}' not in {list(allowed)}",
                 {"input_name": name, "input_config": config, "received_value": value})


def invalid_input_type(name: str, config: list[Any], value: object, type_: str,
                       reason: str) -> ErrorDict:
    """A literal cannot be read as its input's type."""
    return error("invalid_input_type", f"Failed to convert an input value to a {type_} value",
                 f"{name}, {value}, {reason}",
                 {"input_name": name, "input_config": config, "received_value": value,
                  "exception_message": reason})


def return_type_mismatch(name: str, config: list[Any], received: str,
                         link: list[Any]) -> ErrorDict:
    """A link delivers another type than the input takes."""
    return error("return_type_mismatch", "Return type mismatch between linked nodes",
                 f"{name}, {received} != {config[0]}",
                 {"input_name": name, "input_config": config, "received_type": received,
                  "linked_node": link})


def bad_linked_input(name: str, config: list[Any], value: object) -> ErrorDict:
    """A link that is not ``[node_id, output_index]`` or names a missing output."""
    return error("bad_linked_input",
                 "Bad linked input, must be a length-2 list of [node_id, slot_index]", name,
                 {"input_name": name, "input_config": config, "received_value": value})


def dangling_link(name: str, config: list[Any], link: list[Any]) -> ErrorDict:
    """A link names a node the workflow does not have (ComfyUI fails on a KeyError)."""
    reason = f"linked node '{link[0]}' does not exist"
    return error("exception_during_inner_validation", "Exception when validating inner node",
                 reason, {"input_name": name, "input_config": config,
                          "exception_message": reason, "exception_type": "KeyError",
                          "linked_node": link})


def dependency_cycle(cycle: list[str]) -> ErrorDict:
    """The node depends on itself through its links."""
    path = " -> ".join([*cycle, cycle[0]])
    return error("dependency_cycle", "Dependency cycle detected", path, {"cycle": cycle})


def unsupported(details: str, extra_info: Mapping[str, Any] | None = None) -> ErrorDict:
    """A graph shape this server cannot run, reported like ComfyUI's custom validation."""
    return error("custom_validation_failed", "Custom validation failed for node", details,
                 extra_info)


class WorkflowRejected(Exception):
    """A workflow that cannot run; ``body()`` is ComfyUI's HTTP 400 JSON for it."""

    def __init__(self, error_: ErrorDict, node_errors: dict[str, dict[str, Any]] | None = None
                 ) -> None:
        self.error = error_
        self.node_errors = node_errors or {}
        super().__init__(f"{error_['message']}: {error_['details']}".rstrip(": "))

    def body(self) -> dict[str, Any]:
        """``{"error": {...}, "node_errors": {...}}`` as ComfyUI answers ``POST /prompt``."""
        return {"error": self.error, "node_errors": self.node_errors}


def invalid_prompt(message: str, details: str = "") -> WorkflowRejected:
    """A refusal of the whole prompt before any node is looked at."""
    return WorkflowRejected(error("invalid_prompt", message, details))


def no_outputs() -> WorkflowRejected:
    """The workflow has no SaveImage/PreviewImage node."""
    return WorkflowRejected(error("prompt_no_outputs", "Prompt has no outputs"))


def outputs_failed(found: Mapping[str, list[ErrorDict]], class_types: Mapping[str, str],
                   dependents: Mapping[str, list[str]]) -> WorkflowRejected:
    """Node errors gathered into ComfyUI's ``prompt_outputs_failed_validation`` body.

    ``dependents`` maps a node id to the output nodes that need it.
    """
    node_errors = {
        node_id: {"errors": errors, "dependent_outputs": dependents.get(node_id, []),
                  "class_type": class_types.get(node_id, "")}
        for node_id, errors in found.items() if errors
    }
    details = "\n".join(f"{e['message']}: {e['details']}"
                        for errors in found.values() for e in errors)
    top = error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
    return WorkflowRejected(top, node_errors)
