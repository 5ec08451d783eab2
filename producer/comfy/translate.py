"""Translate a ComfyUI API-format workflow into planned zq jobs, or ComfyUI's refusal.

Each output node is followed back to the sampler that made its image; each sampler
becomes one job per image (``batch_size`` n -> n jobs, seeds seed, seed+1, ...), with
its model type from the loader's file name, its prompts from CLIPTextEncode, and its
kind from where its latent starts (see ``sources``). Nothing is submitted: the result
is pure data for the server to resolve and submit.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from common.errors import InvalidJob
from common.job import JobKind, ModelType, new_job
from producer.comfy import errors as err
from producer.comfy.graph import Graph, Node, check, parse, raise_if_any
from producer.comfy.nodes import CHECKPOINTS
from producer.comfy.plan import PlannedJob
from producer.comfy.sources import SAMPLER_CLASSES, Refused, SourceWalker, Start

# Where a job field that new_job refuses came from on the sampler node.
_FIELD_INPUTS = {"steps": "steps", "guidance": "cfg", "seed": "seed", "strength": "denoise",
                 "prompt": "positive", "negative_prompt": "negative",
                 "width": "latent_image", "height": "latent_image"}
# Stand-ins for what the server fills later, so new_job can check everything else now.
_PLACEHOLDERS = {"parent_id": "comfy-parent", "source_image": "uploads/comfy-source.png",
                 "mask": "uploads/comfy-mask.png"}


def translate(workflow: object) -> list[PlannedJob]:
    """The planned jobs of a workflow, parents before children.

    Raises ``WorkflowRejected`` (``.body()`` is ComfyUI's 400 JSON) for any problem.
    """
    graph = parse(workflow)
    check(graph)
    return _Translator(graph).run()


def model_family(name: str) -> ModelType:
    """The model type a checkpoint or UNet file name picks: edit, turbo, else base."""
    lowered = name.lower()
    if "edit" in lowered:
        return ModelType.EDIT
    if "turbo" in lowered:
        return ModelType.TURBO
    return ModelType.BASE


class _Translator:
    """One translation: the plans so far, the sampler memo, the node errors found."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.plans: list[PlannedJob] = []
        self.planned: dict[str, list[int]] = {}
        self.errors: dict[str, list[err.ErrorDict]] = {}
        self.sources = SourceWalker(graph, self.plans, self._sampler)

    def run(self) -> list[PlannedJob]:
        shown: dict[int, list[str]] = {}
        for output_id in self.graph.outputs:
            for index in self._output(self.graph.nodes[output_id]):
                shown.setdefault(index, []).append(output_id)
        raise_if_any(self.graph, self.errors)
        for index, outputs in shown.items():
            plan = self.plans[index]
            tags = {**plan.tags, "comfy_outputs": ",".join(outputs)}
            self.plans[index] = replace(plan, output_nodes=tuple(outputs), tags=tags)
        return list(self.plans)

    def _refuse(self, node_id: str, error: err.ErrorDict) -> list[int]:
        self.errors.setdefault(node_id, []).append(error)
        return []

    def _output(self, output: Node) -> list[int]:
        decode = self.graph.source(output, "images")
        if decode.class_type != "VAEDecode":
            return self._refuse(output.node_id, err.unsupported(
                f"images: must be a VAEDecode of a sampler's latent, not {decode.class_type}"))
        sampler = self.graph.source(decode, "samples")
        if sampler.class_type not in SAMPLER_CLASSES:
            return self._refuse(decode.node_id, err.unsupported(
                f"samples: must come from a KSampler, not {sampler.class_type}"))
        return self._sampler(sampler)

    def _sampler(self, node: Node) -> list[int]:
        if node.node_id in self.planned:
            return self.planned[node.node_id]
        self.planned[node.node_id] = []
        try:
            family = self._family(self.graph.source(node, "model"))
            start = self.sources.latent(self.graph.source(node, "latent_image"))
            drafts = self._drafts(node, family, start)
        except Refused as refused:
            return [] if refused.error is None else self._refuse(refused.node_id, refused.error)
        indices = []
        for draft in drafts:
            problem = _dry_run(draft)
            if problem is not None:
                return self._refuse(node.node_id, problem)
            self.plans.append(draft)
            indices.append(len(self.plans) - 1)
        self.planned[node.node_id] = indices
        return indices

    def _family(self, node: Node) -> ModelType:
        """The model type of the loader behind a MODEL link (through ModelSamplingAuraFlow)."""
        while node.class_type == "ModelSamplingAuraFlow":
            node = self.graph.source(node, "model")
        name_input = "unet_name" if node.class_type == "UNETLoader" else "ckpt_name"
        return model_family(node.values[name_input])

    def _drafts(self, node: Node, family: ModelType, start: Start) -> list[PlannedJob]:
        seed, steps, strength = _schedule(node, start)
        prompt, prompt_id = self._text(self.graph.source(node, "positive"))
        negative, negative_id = self._text(self.graph.source(node, "negative"))
        cfg = node.values["cfg"]
        tags = {"comfy_sampler": node.node_id, "comfy_positive": prompt_id,
                "comfy_negative": negative_id, "comfy_sampler_name": node.values["sampler_name"],
                "comfy_scheduler": node.values["scheduler"], "comfy_cfg": f"{cfg:g}"}
        if start.mask_node is not None:
            tags["comfy_mask"] = start.mask_node
        common: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": negative, "steps": steps,
            "guidance": round(cfg - 1.0, 6), "width": start.size[0] if start.size else None,
            "height": start.size[1] if start.size else None, "sampler_node": node.node_id,
            "mask": start.mask,
        }
        if start.kind == "empty":
            if family is ModelType.EDIT:
                raise Refused(*self._edit_loader_error(node))
            return [PlannedJob(kind=JobKind.GENERATE, model=family, seed=seed + i,
                               strength=None, tags=_batch_tags(tags, i, start.batch), **common)
                    for i in range(start.batch)]
        kind = JobKind.EDIT if start.mask is not None or start.kind == "image" else JobKind.REFINE
        model = family
        if kind is JobKind.EDIT and family is ModelType.TURBO:
            model = ModelType.EDIT  # edits run on turbo weights, on the edit queue (route)
        if start.kind == "image":
            return [PlannedJob(kind=kind, model=model, seed=seed, strength=strength,
                               source_image=start.image, tags=tags, **common)]
        return [PlannedJob(kind=kind, model=model, seed=seed + i, strength=strength,
                           parent_index=parent, tags=_batch_tags(tags, i, len(start.parents)),
                           **common)
                for i, parent in enumerate(start.parents)]

    def _text(self, node: Node) -> tuple[str, str]:
        """The text behind a CONDITIONING link; ConditioningZeroOut is an empty prompt."""
        if node.class_type == "ConditioningZeroOut":
            return "", node.node_id
        return str(node.values["text"]), node.node_id

    def _edit_loader_error(self, node: Node) -> tuple[str, err.ErrorDict]:
        loader = self.graph.source(node, "model")
        while loader.class_type == "ModelSamplingAuraFlow":
            loader = self.graph.source(loader, "model")
        name_input = "unet_name" if loader.class_type == "UNETLoader" else "ckpt_name"
        allowed = [name for name in CHECKPOINTS if model_family(name) is not ModelType.EDIT]
        spec = loader.node_class.input(name_input)
        config = spec.config() if spec else None
        return loader.node_id, err.value_not_in_list(
            name_input, config, loader.values[name_input], allowed)


def _schedule(node: Node, start: Start) -> tuple[int, int, float | None]:
    """(seed, job steps, strength) of a sampler node, in the pipeline's terms.

    ComfyUI runs ``steps`` steps over the last ``denoise`` share of a longer schedule;
    the pipeline runs the last ``strength`` share of ``steps``. So the job asks for
    int(steps / denoise) steps at strength = denoise, as ComfyUI computes its schedule.
    """
    values = node.values
    if node.class_type == "KSampler":
        seed, steps, denoise = values["seed"], values["steps"], values["denoise"]
        total = int(steps / denoise) if denoise < 1.0 else steps
    else:
        seed, steps = values["noise_seed"], values["steps"]
        first, last = values["start_at_step"], min(values["end_at_step"], steps)
        if last < steps:
            raise Refused(node.node_id, err.unsupported(
                "end_at_step: sampling must run to the last step (no leftover noise)"))
        if first >= last:
            raise Refused(node.node_id, err.unsupported(
                "start_at_step: must be below steps", {"input_name": "start_at_step"}))
        denoise, total = (last - first) / steps, steps
    if start.kind == "empty":
        if denoise < 1.0:
            raise Refused(node.node_id, err.unsupported(
                "denoise: below 1.0 needs an image to start from (VAEEncode), not empty noise",
                {"input_name": "denoise"}))
        return seed, total, None
    return seed, total, round(denoise, 6)


def _batch_tags(tags: dict[str, str], index: int, count: int) -> dict[str, str]:
    return {**tags, "comfy_batch_index": str(index)} if count > 1 else dict(tags)


def _dry_run(plan: PlannedJob) -> err.ErrorDict | None:
    """``new_job``'s verdict on the plan, with placeholders for what the server fills."""
    fields = plan.job_fields()
    if plan.parent_index is not None:
        fields["parent_id"] = _PLACEHOLDERS["parent_id"]
    if plan.source_image is not None:
        fields["source_image"] = _PLACEHOLDERS["source_image"]
    if plan.mask is not None:
        fields["mask"] = _PLACEHOLDERS["mask"]
    try:
        new_job(plan.kind, **fields)
    except InvalidJob as exc:
        name = _FIELD_INPUTS.get(exc.field, exc.field)
        return err.unsupported(f"{name} - {exc}", {"input_name": name})
    return None
