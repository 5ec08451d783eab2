"""Where a sampler's latent comes from: empty noise, an uploaded image, or another sampler.

The walk follows the latent input back through encoders, noise masks and upscalers
to its start, and reports what the sampler's job starts from and at what size.
Shapes the queue cannot run become node errors, never exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from common.job import SIZE_MULTIPLE_PX
from producer.comfy import errors as err
from producer.comfy.graph import Graph, Node
from producer.comfy.nodes import upscale_factor
from producer.comfy.plan import PlannedJob, PlannedMask

SAMPLER_CLASSES = frozenset({"KSampler", "KSamplerAdvanced"})
EMPTY_LATENTS = frozenset({"EmptyLatentImage", "EmptySD3LatentImage"})

Size = tuple[int, int] | None


class Refused(Exception):
    """A node error found on the walk; the caller records it and stops this branch."""

    def __init__(self, node_id: str, error: err.ErrorDict | None) -> None:
        self.node_id = node_id
        self.error = error  # None: already recorded (a parent sampler's own errors)
        super().__init__(error["details"] if error else node_id)


@dataclass(frozen=True)
class Start:
    """What a sampler's job starts from.

    ``empty``: noise of ``size``, ``batch`` images. ``image``: the upload ``image``.
    ``parent``: the planned jobs at ``parents`` (one child job each). ``size`` None
    means the input's own size.
    """

    kind: str
    size: Size
    batch: int = 1
    image: str | None = None
    parents: tuple[int, ...] = ()
    mask: PlannedMask | None = None
    mask_node: str | None = None


SamplerPlanner = Callable[[Node], list[int]]
"""Plans a sampler node (once) and returns the indices of its planned jobs."""


class SourceWalker:
    """Walks latent and pixel chains back to their start for one graph."""

    def __init__(self, graph: Graph, plans: list[PlannedJob], plan_sampler: SamplerPlanner
                 ) -> None:
        self.graph = graph
        self.plans = plans
        self.plan_sampler = plan_sampler

    def latent(self, node: Node) -> Start:
        """The start of the latent ``node`` delivers."""
        cls, values = node.class_type, node.values
        if cls in EMPTY_LATENTS:
            return Start("empty", (values["width"], values["height"]), values["batch_size"])
        if cls == "VAEEncode":
            return self.pixels(self.graph.source(node, "pixels"))
        if cls == "VAEEncodeForInpaint":
            start = self.pixels(self.graph.source(node, "pixels"))
            return self._masked(start, node)
        if cls == "SetLatentNoiseMask":
            start = self.latent(self.graph.source(node, "samples"))
            if start.kind == "empty":
                raise Refused(node.node_id, err.unsupported(
                    "samples: a noise mask needs an image to keep (VAEEncode), not empty noise"))
            return self._masked(start, node)
        if cls in SAMPLER_CLASSES:
            return self._parent(node, None)
        if cls == "LatentUpscale":
            return self._parent(self._sampler_of(node, "samples"),
                                self._sized(node, values["width"], values["height"]))
        if cls == "LatentUpscaleBy":
            return self._scaled_parent(node, "samples", values["scale_by"])
        raise Refused(node.node_id, err.unsupported(f"{cls} cannot start a sampler's latent"))

    def pixels(self, node: Node) -> Start:
        """The start of the image ``node`` delivers (then encoded by a VAE)."""
        cls, values = node.class_type, node.values
        if cls == "LoadImage":
            return Start("image", None, image=values["image"])
        if cls == "VAEDecode":
            return self._parent(self._sampler_of(node, "samples"), None)
        inner = self.pixels(self.graph.source(node, "image"))
        if cls == "ImageScale":
            return replace(inner, size=self._sized(node, values["width"], values["height"],
                                                   inner.size))
        if cls == "ImageScaleBy":
            return replace(inner, size=_times(node, inner.size, values["scale_by"]))
        loader = self.graph.source(node, "upscale_model")
        factor = upscale_factor(loader.values["model_name"]) or 1
        return replace(inner, size=_times(node, inner.size, float(factor)))

    def _masked(self, start: Start, node: Node) -> Start:
        source = self.graph.source(node, "mask")
        if source.class_type == "LoadImageMask":
            mask = PlannedMask(source.values["image"], source.values["channel"])
        else:  # LoadImage's second output: its alpha channel
            mask = PlannedMask(source.values["image"], "alpha")
        return replace(start, mask=mask, mask_node=node.node_id)

    def _sampler_of(self, node: Node, name: str) -> Node:
        source = self.graph.source(node, name)
        if source.class_type not in SAMPLER_CLASSES:
            raise Refused(node.node_id, err.unsupported(
                f"{name}: must come from a KSampler here, not {source.class_type}"))
        return source

    def _parent(self, sampler: Node, size: Size) -> Start:
        parents = tuple(self.plan_sampler(sampler))
        if not parents:  # the parent itself was refused; its errors say why
            raise Refused(sampler.node_id, None)
        first = self.plans[parents[0]]
        own = (first.width, first.height) if first.width and first.height else None
        return Start("parent", size or own, parents=parents)

    def _scaled_parent(self, node: Node, name: str, factor: float) -> Start:
        start = self._parent(self._sampler_of(node, name), None)
        return replace(start, size=_times(node, start.size, factor))

    def _sized(self, node: Node, width: int, height: int, base: Size = None) -> Size:
        """An explicit size; a 0 side keeps the aspect ratio of ``base`` (ComfyUI's rule)."""
        if width and height:
            return (_round16(width), _round16(height))
        if base is None and node.class_type == "LatentUpscale":
            base = self._parent(self._sampler_of(node, "samples"), None).size
        if base is None:
            raise Refused(node.node_id, err.unsupported(
                "width/height: give both; the input's size is not known here"))
        if not width and not height:
            return base
        if not width:
            return (_round16(base[0] * height / base[1]), _round16(height))
        return (_round16(width), _round16(base[1] * width / base[0]))


def _times(node: Node, size: Size, factor: float) -> Size:
    if size is None:
        raise Refused(node.node_id, err.unsupported(
            "scaling by a factor needs a known size; use ImageScale with width and height"))
    return (_round16(size[0] * factor), _round16(size[1] * factor))


def _round16(side: float) -> int:
    """The nearest multiple of the job size step (at least one step)."""
    return max(SIZE_MULTIPLE_PX, round(side / SIZE_MULTIPLE_PX) * SIZE_MULTIPLE_PX)
