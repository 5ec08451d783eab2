"""Parse a ComfyUI API-format workflow and check it node by node, as ComfyUI does.

``parse`` refuses what ComfyUI refuses before looking at inputs (no class, an unknown
class, no output node). ``check`` then walks back from every output node and checks
each input it reaches: present, of the right type, in range, and every link pointing
at an existing node's existing output of the right type, with no cycles. Nodes no
output needs are ignored, as ComfyUI ignores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from producer.comfy import errors as err
from producer.comfy.nodes import NODE_CLASSES, InputSpec, NodeClass

MAX_NODES = 500
"""More nodes than any Z-Image workflow needs; the checks below recurse along links."""

Link = tuple[str, int]
"""``(node_id, output_index)``."""


@dataclass
class Node:
    """One node: its class, its literal values (converted) and its links, by input name."""

    node_id: str
    node_class: NodeClass
    raw: dict[str, Any]
    values: dict[str, Any] = field(default_factory=dict)
    links: dict[str, Link] = field(default_factory=dict)

    @property
    def class_type(self) -> str:
        """The node's ComfyUI class name."""
        return self.node_class.name


@dataclass
class Graph:
    """A parsed workflow: nodes by id and the ids of its output nodes, in order."""

    nodes: dict[str, Node]
    outputs: list[str]

    def source(self, node: Node, name: str) -> Node:
        """The node a checked link input points at."""
        return self.nodes[node.links[name][0]]

    def slot(self, node: Node, name: str) -> int:
        """The output index a checked link input takes."""
        return node.links[name][1]


def parse(workflow: object) -> Graph:
    """A graph of known classes with at least one output; ``WorkflowRejected`` otherwise."""
    if not isinstance(workflow, Mapping):
        raise err.invalid_prompt("Prompt must be a JSON object of node id -> node",
                                 type(workflow).__name__)
    if len(workflow) > MAX_NODES:
        raise err.invalid_prompt(f"Prompt has more than {MAX_NODES} nodes", str(len(workflow)))
    nodes: dict[str, Node] = {}
    for node_id, body in workflow.items():
        where = f"Node ID '#{node_id}'"
        if not isinstance(body, Mapping) or "class_type" not in body:
            raise err.invalid_prompt(
                "Cannot execute because a node is missing the class_type property.", where)
        class_type = body["class_type"]
        node_class = NODE_CLASSES.get(class_type) if isinstance(class_type, str) else None
        if node_class is None:
            raise err.invalid_prompt(
                f"Cannot execute because node {class_type} does not exist.", where)
        inputs = body.get("inputs")
        raw = dict(inputs) if isinstance(inputs, Mapping) else {}
        for alias, name in node_class.aliases.items():
            if alias in raw and name not in raw:
                raw[name] = raw.pop(alias)
        nodes[str(node_id)] = Node(str(node_id), node_class, raw)
    outputs = sorted((i for i, n in nodes.items() if n.node_class.output_node), key=_id_order)
    if not outputs:
        raise err.no_outputs()
    return Graph(nodes, outputs)


def check(graph: Graph) -> None:
    """Check every node the outputs need; ``WorkflowRejected`` with all node errors found."""
    found: dict[str, list[err.ErrorDict]] = {}
    dependents: dict[str, list[str]] = {}
    for output in graph.outputs:
        for node_id in _reach(graph, output):
            dependents.setdefault(node_id, []).append(output)
            if node_id not in found:
                found[node_id] = _check_node(graph, graph.nodes[node_id])
    for cycle in _cycles(graph, list(found)):
        for node_id in cycle:
            found[node_id].append(err.dependency_cycle(cycle))
    raise_if_any(graph, found, dependents)


def dependents_of(graph: Graph) -> dict[str, list[str]]:
    """For each node an output needs, the output node ids that need it."""
    result: dict[str, list[str]] = {}
    for output in graph.outputs:
        for node_id in _reach(graph, output):
            result.setdefault(node_id, []).append(output)
    return result


def raise_if_any(graph: Graph, found: Mapping[str, list[err.ErrorDict]],
                 dependents: Mapping[str, list[str]] | None = None) -> None:
    """Raise ComfyUI's ``prompt_outputs_failed_validation`` if any node has errors."""
    if any(found.values()):
        class_types = {i: graph.nodes[i].class_type for i in found if i in graph.nodes}
        raise err.outputs_failed(found, class_types,
                                 dependents if dependents is not None else dependents_of(graph))


def is_link(value: object) -> bool:
    """Whether an input value is a link, ``[node_id, output_index]``."""
    return (isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str)
            and isinstance(value[1], int) and not isinstance(value[1], bool))


def _id_order(node_id: str) -> tuple[int, int | str]:
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def _reach(graph: Graph, start: str) -> list[str]:
    """Node ids reachable from ``start`` through links to existing nodes, ``start`` first."""
    seen: list[str] = []
    stack = [start]
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in graph.nodes:
            continue
        seen.append(node_id)
        for value in graph.nodes[node_id].raw.values():
            if is_link(value):
                stack.append(value[0])
    return seen


def _cycles(graph: Graph, node_ids: list[str]) -> list[list[str]]:
    """Each cycle among checked links once, as the list of its node ids."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[list[str]] = []

    def visit(node_id: str, path: list[str]) -> None:
        state[node_id] = 1
        path.append(node_id)
        for source_id, _ in graph.nodes[node_id].links.values():
            if state.get(source_id) == 1:
                found.append(path[path.index(source_id):])
            elif source_id not in state:
                visit(source_id, path)
        path.pop()
        state[node_id] = 2

    for node_id in node_ids:
        if node_id not in state:
            visit(node_id, [])
    return found


def _check_node(graph: Graph, node: Node) -> list[err.ErrorDict]:
    errors: list[err.ErrorDict] = []
    for spec in node.node_class.inputs:
        if spec.name not in node.raw:
            if spec.required:
                errors.append(err.required_input_missing(spec.name))
            continue
        value = node.raw[spec.name]
        problem = (_check_link(graph, node, spec, value) if spec.is_link or is_link(value)
                   else _check_literal(node, spec, value))
        if problem is not None:
            errors.append(problem)
    return errors


def _check_link(graph: Graph, node: Node, spec: InputSpec, value: object
                ) -> err.ErrorDict | None:
    config = spec.config()
    if not is_link(value):
        return err.bad_linked_input(spec.name, config, value)
    assert isinstance(value, list | tuple)
    link: Link = (value[0], value[1])
    source = graph.nodes.get(link[0])
    if source is None:
        return err.dangling_link(spec.name, config, list(link))
    outputs = source.node_class.outputs
    if not 0 <= link[1] < len(outputs):
        return err.bad_linked_input(spec.name, config, list(link))
    received = outputs[link[1]]
    # A checkpoint is one bundle: graphs written by hand often take its CLIP or VAE
    # from output 0, and ComfyUI's strict check would refuse a graph that is clear.
    bundle = source.class_type == "CheckpointLoaderSimple" and spec.type in outputs
    if received != spec.type and not bundle:
        return err.return_type_mismatch(spec.name, config, received, list(link))
    node.links[spec.name] = link
    return None


def _check_literal(node: Node, spec: InputSpec, value: object) -> err.ErrorDict | None:
    config = spec.config()
    if isinstance(spec.type, tuple):
        if not isinstance(value, str) or not value:
            return err.invalid_input_type(spec.name, config, value, "COMBO", "not a name")
        if not spec.free and value not in spec.type and not (spec.accept and spec.accept(value)):
            return err.value_not_in_list(spec.name, config, value, spec.type)
        node.values[spec.name] = value
        return None
    try:
        converted = _convert(spec.type, value)
    except (TypeError, ValueError, OverflowError) as exc:
        return err.invalid_input_type(spec.name, config, value, spec.type, str(exc))
    lo, hi = spec.options.get("min"), spec.options.get("max")
    if lo is not None and converted < lo:
        return err.value_smaller_than_min(spec.name, config, converted, lo)
    if hi is not None and converted > hi:
        return err.value_bigger_than_max(spec.name, config, converted, hi)
    node.values[spec.name] = converted
    return None


def _convert(type_: str, value: object) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, list | dict):
        raise TypeError(f"{type(value).__name__} is not a {type_.lower()}")
    if type_ == "INT":
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(f"{value} is not a whole number")
        return int(value)  # type: ignore[call-overload]
    if type_ == "FLOAT":
        number = float(value)  # type: ignore[arg-type]
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"{value} is not a finite number")
        return number
    return str(value)
