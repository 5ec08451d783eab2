"""Ad-variant campaigns: products x variant axes, rendered on a cron schedule.

A campaign file is YAML or JSON (chosen by the extension ``.yaml``/``.yml``/``.json``,
otherwise by content: a file starting with ``{`` is JSON). Example::

    name: spring-sale                 # 1-64 of letters, digits, '_', '.', '-'
    schedule: "0 9 * * mon"           # 5-field cron, or "@daily" etc. (quote it)
    timezone: Europe/Paris            # optional IANA zone the schedule runs in (UTC)
    renders: fresh                    # optional: same (default) or fresh images each period
    webhook: https://hooks.example.com/zq       # optional: called when a run finishes
    prompt_template: "{product}, on {background}, {style} style"   # optional
    defaults:                         # optional job fields applied to every variant
      steps: 9
      priority: 3
      output_format: webp
      negative_prompt: "text, watermark"
      strength: 0.6                   # used by image (edit) products only
    products:                         # each needs a prompt, an image, or both
      - sku: A1
        prompt: a glass perfume bottle
      - sku: B2
        image: photos/b2.png          # a file relative to this campaign file, or a storage key
        prompt: the white sneaker
    axes:                             # all optional; each a non-empty list
      backgrounds: [white marble, {key: beach, text: a sandy beach at sunset}]
      styles: [studio, film]
      sizes: ["1024x1024", "768x1344"]
      seeds: [1, 2]

Fields
------
``schedule`` is read in ``timezone`` (an IANA name, default ``UTC``), daylight saving
included; see :mod:`producer.cron` for the syntax and for times skipped or repeated by a
clock change. Period ids are always the tick in UTC (``2026-11-23T08:00Z`` for 09:00 in
Paris in winter), so an id names one instant whatever the zone.

``renders``: ``same`` (the default) renders every period with the same seeds, so each
period repeats the same images; ``fresh`` folds the period into every variant's seed, so
each period renders new ones (a period run again still gets the same images).

``defaults`` takes ``steps``, ``guidance``, ``strength``, ``priority``,
``output_format``, ``negative_prompt``, ``model`` and ``adapters`` (the brand's LoRA
adapters, ``["acme:0.8"]``), checked by the job rules.

``axes``: ``sizes`` (``WIDTHxHEIGHT`` strings, under the job size rules) and ``seeds``
(integers) set the job's size and seed. Every other axis (any name of lowercase
letters, digits and ``_``) is a *prompt axis*: its values are strings, or
``{key, text}`` mappings where ``key`` is the short id used in variant keys and tags
and ``text`` goes into the prompt. A plain string's key is its slug (``white marble``
-> ``white-marble``).

``prompt_template`` placeholders: ``{product}`` (the product's prompt, or "the product"
for an image without one), ``{sku}``, and each prompt axis by its name without a
trailing ``s`` (``{background}`` for ``backgrounds``; the full name works too). The
template must use every prompt axis, and ``{product}`` when any product has a prompt.
Without one it joins what is given: ``"{product}, on {background}, {style} style"``,
other axes appended as ``, {name}``.

Expansion
---------
Each product is combined with every combination of axis values. A product with an
image becomes an ``edit`` variant, one with only a prompt a ``generate`` variant.
A variant's key (``sku=A1/background=marble/style=studio/size=1024x1024/seed=1``; prompt
axes sorted by name, then size and seed) is independent of the order of axes in the
file. Its job id is a hash of (campaign name, period, variant key), so expanding the
same period again yields the same job ids and enqueues nothing new; its conversation
is ``campaign-<name>-<period>``, so a run's results share one storage folder. Without
a ``seeds`` axis the seed is derived from the variant key. With ``renders: fresh`` every
seed is derived from the variant key and the period (a ``seeds`` axis then still makes
distinct variants, each with its own seed per period).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal, TypeVar, cast, get_args

import yaml

from common.errors import InvalidJob
from common.job import (
    ID_PATTERN,
    KEY_PATTERN,
    MAX_PIXELS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MAX_SIDE_PX,
    MAX_TAGS,
    MIN_SIDE_PX,
    SIZE_MULTIPLE_PX,
    JobKind,
    new_job,
)
from common.webhooks import validate_webhook_url
from producer.cron import DEFAULT_TIMEZONE, CronSchedule, parse_period_id

MAX_NAME_CHARS = 64
"""Campaign names, SKUs and axis value keys: at most this many id characters."""
MAX_VARIANTS = 1000
"""Variants one period may expand to (products x the length of every axis)."""
MAX_AXES = MAX_TAGS - 3
"""Axes one campaign may have: each is a tag, beside campaign, period and sku."""
DEFAULT_FIELDS = frozenset(
    {"steps", "guidance", "strength", "priority", "output_format", "quality", "negative_prompt",
     "model", "adapters"})
IMAGE_ONLY_PRODUCT = "the product"
"""What ``{product}`` renders as for a product given only an image."""
Renders = Literal["same", "fresh"]
"""Whether each period renders the ``same`` images as the last or ``fresh`` ones."""
DEFAULT_RENDERS: Renders = "same"

_TOP_FIELDS = frozenset(
    {"name", "schedule", "timezone", "renders", "webhook", "defaults", "products", "axes",
     "prompt_template"})
_PRODUCT_FIELDS = frozenset({"sku", "prompt", "image"})
_AXIS_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_RESERVED_LABELS = frozenset({"product", "sku", "size", "seed", "campaign", "period"})
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_ID_RULE = f"1-{MAX_NAME_CHARS} characters of letters, digits, '_', '.', '-'"
_SEED_RANGE = 2**31
_T = TypeVar("_T")


@dataclass(frozen=True)
class Product:
    """One thing to advertise: a prompt, an image (absolute file path or storage key), or both."""

    sku: str
    prompt: str | None = None
    image: str | None = None

    @property
    def kind(self) -> JobKind:
        """``edit`` when the product starts from an image, else ``generate``."""
        return JobKind.EDIT if self.image is not None else JobKind.GENERATE


@dataclass(frozen=True)
class AxisValue:
    """One value of a prompt axis: ``key`` names it in ids and tags, ``text`` is prompted."""

    key: str
    text: str


@dataclass(frozen=True)
class Axis:
    """A prompt axis such as ``backgrounds``; ``label`` (``background``) is its placeholder."""

    name: str
    label: str
    values: tuple[AxisValue, ...]


@dataclass(frozen=True)
class Campaign:
    """A validated campaign; build it with :func:`load_campaign` or :func:`parse_campaign`.

    ``schedule`` is the cron expression as written (validated), read in ``timezone``;
    :attr:`cron` is it parsed.
    ``prompt_axes`` are sorted by label; ``sizes`` and ``seeds`` are empty when not given.
    """

    name: str
    schedule: str
    products: tuple[Product, ...]
    prompt_template: str
    prompt_axes: tuple[Axis, ...] = ()
    sizes: tuple[tuple[int, int], ...] = ()
    seeds: tuple[int, ...] = ()
    defaults: dict[str, Any] = field(default_factory=dict, hash=False)
    webhook: str | None = None
    source: Path | None = None
    timezone: str = DEFAULT_TIMEZONE
    renders: Renders = DEFAULT_RENDERS

    @cached_property
    def cron(self) -> CronSchedule:
        """The parsed schedule, in the campaign's zone."""
        return CronSchedule.parse(self.schedule, self.timezone)

    @property
    def variant_count(self) -> int:
        """How many variants one period expands to."""
        lengths = [len(a.values) for a in self.prompt_axes]
        return len(self.products) * math.prod(
            [*lengths, len(self.sizes) or 1, len(self.seeds) or 1])


@dataclass(frozen=True)
class Variant:
    """One image a campaign period asks for; every id in it is deterministic."""

    variant_key: str
    sku: str
    kind: JobKind
    prompt: str
    image: str | None
    width: int | None
    height: int | None
    seed: int
    tags: dict[str, str] = field(hash=False)
    job_id: str
    conversation_id: str


# --- loading -------------------------------------------------------------------------------


def load_campaign(path: str | Path) -> Campaign:
    """Read and validate a campaign file; raises ``InvalidJob`` naming the field path.

    Problems with the file itself (unreadable, not YAML/JSON) name the field ``campaign``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidJob("campaign", f"cannot read file: {exc.strerror}", str(path)) from None
    except UnicodeDecodeError:
        raise InvalidJob("campaign", "must be UTF-8 text", str(path)) from None
    return parse_campaign(_decode(text, path), base_dir=path.parent, source=path)


def parse_campaign(data: object, base_dir: Path | None = None,
                   source: Path | None = None) -> Campaign:
    """Validate a decoded campaign document; image paths resolve against ``base_dir`` (cwd)."""
    doc = _mapping(data, "campaign")
    _reject_unknown(doc, _TOP_FIELDS, "", "campaign")
    name = _identifier(_required(doc, "name"), "name")
    schedule = _required(doc, "schedule")
    timezone = doc.get("timezone", DEFAULT_TIMEZONE)
    CronSchedule.parse(schedule, timezone)
    renders = _renders(doc.get("renders", DEFAULT_RENDERS))
    webhook = doc.get("webhook")
    if webhook is not None:
        validate_webhook_url(webhook)
    products = _products(_required(doc, "products"), base_dir or Path.cwd())
    prompt_axes, sizes, seeds = _axes(doc.get("axes"))
    template = _template(doc.get("prompt_template"), prompt_axes, products)
    campaign = Campaign(
        name=name, schedule=schedule, products=products, prompt_template=template,
        prompt_axes=prompt_axes, sizes=sizes, seeds=seeds,
        defaults=_defaults(doc.get("defaults"), products), webhook=webhook, source=source,
        timezone=timezone, renders=renders)
    if campaign.variant_count > MAX_VARIANTS:
        raise InvalidJob("axes", f"at most {MAX_VARIANTS} variants per period "
                         "(products x the length of every axis)", campaign.variant_count)
    _check_prompt_lengths(campaign)
    return campaign


def _decode(text: str, path: Path) -> object:
    suffix = path.suffix.lower()
    as_json = suffix == ".json" or (
        suffix not in (".yaml", ".yml") and text.lstrip().startswith("{"))
    if as_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidJob("campaign", f"must be valid JSON: {exc.msg} at line {exc.lineno} "
                             f"column {exc.colno}", str(path)) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = " ".join(str(exc).split())
        raise InvalidJob("campaign", f"must be valid YAML: {problem}", str(path)) from None


def _renders(value: object) -> Renders:
    if isinstance(value, str) and value in get_args(Renders):
        return cast(Renders, value)
    raise InvalidJob("renders", "same (every period renders the same images) or fresh "
                     "(each period renders new ones)", value)


def _products(value: object, base_dir: Path) -> tuple[Product, ...]:
    if not isinstance(value, list) or not value:
        raise InvalidJob("products", "a non-empty list of products", value)
    products: list[Product] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(value):
        path = f"products[{i}]"
        entry = _mapping(item, path)
        _reject_unknown(entry, _PRODUCT_FIELDS, f"{path}.", "product")
        sku = _identifier(_required(entry, "sku", path), f"{path}.sku")
        if sku in seen:
            raise InvalidJob(f"{path}.sku", f"unique in the campaign (products[{seen[sku]}] "
                             "has it too)", sku)
        seen[sku] = i
        prompt = entry.get("prompt")
        if prompt is not None:
            prompt = _text(prompt, f"{path}.prompt", MAX_PROMPT_CHARS)
        image = entry.get("image")
        if image is not None:
            image = _image(image, f"{path}.image", base_dir)
        if prompt is None and image is None:
            raise InvalidJob(path, "a product needs a prompt, an image, or both")
        products.append(Product(sku, prompt, image))
    return tuple(products)


def _image(value: object, path: str, base_dir: Path) -> str:
    rule = "an existing file (relative to the campaign file) or a storage key"
    if not isinstance(value, str) or not value.strip():
        raise InvalidJob(path, rule, value)
    local = base_dir / value
    if local.is_file():
        return str(local.resolve())
    if KEY_PATTERN.fullmatch(value) and ".." not in value:
        return value
    raise InvalidJob(path, rule, value)


def _axes(value: object) -> tuple[tuple[Axis, ...], tuple[tuple[int, int], ...], tuple[int, ...]]:
    if value is None:
        return (), (), ()
    axes = _mapping(value, "axes")
    if len(axes) > MAX_AXES:
        raise InvalidJob("axes", f"at most {MAX_AXES} axes", len(axes))
    prompt_axes: dict[str, Axis] = {}
    sizes: tuple[tuple[int, int], ...] = ()
    seeds: tuple[int, ...] = ()
    for name, values in axes.items():
        path = f"axes.{name}"
        if not isinstance(values, list) or not values:
            raise InvalidJob(path, "a non-empty list", values)
        if name == "sizes":
            sizes = _unique([_size(v, f"{path}[{i}]") for i, v in enumerate(values)], path)
        elif name == "seeds":
            seeds = _unique([_seed(v, f"{path}[{i}]") for i, v in enumerate(values)], path)
        else:
            axis = _prompt_axis(name, values)
            if axis.label in prompt_axes:
                raise InvalidJob(path, f"axis names must differ beyond a trailing 's' "
                                 f"({prompt_axes[axis.label].name} is there too)", name)
            prompt_axes[axis.label] = axis
    return tuple(prompt_axes[label] for label in sorted(prompt_axes)), sizes, seeds


def _prompt_axis(name: str, values: list[Any]) -> Axis:
    path = f"axes.{name}"
    if not _AXIS_NAME.fullmatch(name):
        raise InvalidJob(path, "an axis name: 1-32 of lowercase letters, digits, '_', "
                         "starting with a letter", name)
    label = name[:-1] if name.endswith("s") and not name.endswith("ss") else name
    if label in _RESERVED_LABELS:
        raise InvalidJob(path, f"not a reserved name ({', '.join(sorted(_RESERVED_LABELS))}; "
                         "sizes and seeds are the only built-in axes)", name)
    parsed = [_axis_value(v, f"{path}[{i}]") for i, v in enumerate(values)]
    keys = [v.key for v in parsed]
    _unique(keys, path)
    return Axis(name, label, tuple(parsed))


def _axis_value(value: object, path: str) -> AxisValue:
    if isinstance(value, dict):
        _reject_unknown(value, frozenset({"key", "text"}), f"{path}.", "axis value")
        key = _identifier(_required(value, "key", path), f"{path}.key")
        return AxisValue(key, _text(_required(value, "text", path), f"{path}.text",
                                    MAX_PROMPT_CHARS))
    text = _text(value, path, MAX_PROMPT_CHARS)
    key = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:MAX_NAME_CHARS].strip("-")
    if not key:
        raise InvalidJob(path, "has no letters or digits to make a key from; "
                         "give {key: ..., text: ...}", value)
    return AxisValue(key, text)


def _size(value: object, path: str) -> tuple[int, int]:
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InvalidJob(path, "WIDTHxHEIGHT in pixels, e.g. 1024x1024", value)
    width, height = int(match[1]), int(match[2])
    for side in (width, height):
        if side % SIZE_MULTIPLE_PX:
            raise InvalidJob(path, f"sides must be multiples of {SIZE_MULTIPLE_PX} pixels", value)
        if not MIN_SIDE_PX <= side <= MAX_SIDE_PX:
            raise InvalidJob(path, f"sides between {MIN_SIDE_PX} and {MAX_SIDE_PX} pixels", value)
    if width * height > MAX_PIXELS:
        raise InvalidJob(path, f"width x height at most {MAX_PIXELS} pixels", value)
    return width, height


def _seed(value: object, path: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise InvalidJob(path, f"an integer between 0 and {MAX_SEED}", value)
    return value


def _template(value: object, axes: tuple[Axis, ...], products: tuple[Product, ...]) -> str:
    if value is None:
        parts = ["{product}"]
        for axis in axes:
            label = axis.label
            parts.append({"background": "on {background}", "style": "{style} style"}
                         .get(label, f"{{{label}}}"))
        return ", ".join(parts)
    template = _text(value, "prompt_template", MAX_PROMPT_CHARS)
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise InvalidJob("prompt_template", f"a valid template ({exc}; write '{{{{' and "
                         "'}}' for literal braces)", template) from None
    known = {"product", "sku"} | {a.label for a in axes} | {a.name for a in axes}
    unknown = sorted(used - known)
    if unknown:
        raise InvalidJob("prompt_template", "placeholders are "
                         + ", ".join(f"{{{k}}}" for k in sorted(known))
                         + f"; not {{{unknown[0]}}}", template)
    for axis in axes:
        if not {axis.label, axis.name} & used:
            raise InvalidJob("prompt_template", f"must use every prompt axis; "
                             f"{{{axis.label}}} is missing", template)
    if "product" not in used and any(p.prompt is not None for p in products):
        raise InvalidJob("prompt_template", "must use {product} (some products have prompts)",
                         template)
    return template


def _defaults(value: object, products: tuple[Product, ...]) -> dict[str, Any]:
    if value is None:
        return {}
    defaults = _mapping(value, "defaults")
    for key in defaults:
        if key not in DEFAULT_FIELDS:
            raise InvalidJob(f"defaults.{key}", "is not a campaign default; use "
                             + ", ".join(sorted(DEFAULT_FIELDS)))
    probe: dict[str, Any] = {"job_id": "probe", "prompt": "probe", "seed": 0}
    try:
        for kind in sorted({p.kind for p in products}):
            fields = _applicable(defaults, kind)
            if kind is JobKind.EDIT:
                fields["parent_id"] = "probe"
            new_job(kind, **probe, **fields)
    except InvalidJob as exc:
        raise InvalidJob(f"defaults.{exc.field}", exc.limit, exc.value) from None
    return defaults


def _check_prompt_lengths(campaign: Campaign) -> None:
    """Render each product with the longest value of every axis: the longest prompts."""
    longest = {a.label: max(a.values, key=lambda v: len(v.text)) for a in campaign.prompt_axes}
    for i, product in enumerate(campaign.products):
        try:
            prompt = _render(campaign, product, longest)
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidJob("prompt_template", f"cannot be rendered ({exc})",
                             campaign.prompt_template) from None
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidJob("prompt_template", f"renders prompts of at most {MAX_PROMPT_CHARS} "
                             f"characters; products[{i}] reaches {len(prompt)}", len(prompt))
        if not prompt.strip():
            raise InvalidJob("prompt_template", "renders an empty prompt", campaign.prompt_template)


# --- expansion -----------------------------------------------------------------------------


def expand(campaign: Campaign, period: str) -> list[Variant]:
    """Every variant of ``campaign`` for ``period`` (a period id), in a stable order.

    Deterministic: the same campaign and period always give the same variants and ids.
    """
    parse_period_id(period)
    conversation = conversation_id(campaign.name, period)
    axes = campaign.prompt_axes
    sizes: list[tuple[int, int] | None] = list(campaign.sizes) or [None]
    seeds: list[int | None] = list(campaign.seeds) or [None]
    variants: list[Variant] = []
    for product in campaign.products:
        for choice in itertools.product(*(a.values for a in axes)):
            chosen = dict(zip((a.label for a in axes), choice, strict=True))
            variants.extend(_variant(campaign, period, conversation, product, chosen, size, seed)
                            for size in sizes for seed in seeds)
    return variants


def _variant(campaign: Campaign, period: str, conversation: str, product: Product,
             chosen: dict[str, AxisValue], size: tuple[int, int] | None,
             seed: int | None) -> Variant:
    tags = {"campaign": campaign.name, "period": period, "sku": product.sku}
    tags.update({label: value.key for label, value in chosen.items()})
    if size is not None:
        tags["size"] = f"{size[0]}x{size[1]}"
    if seed is not None:
        tags["seed"] = str(seed)
    key = "/".join(f"{k}={v}" for k, v in tags.items() if k not in ("campaign", "period"))
    return Variant(
        variant_key=key,
        sku=product.sku,
        kind=product.kind,
        prompt=_render(campaign, product, chosen),
        image=product.image,
        width=size[0] if size else None,
        height=size[1] if size else None,
        seed=_seed_of(campaign, period, key, seed),
        tags=tags,
        job_id=variant_job_id(campaign.name, period, key),
        conversation_id=conversation,
    )


def _seed_of(campaign: Campaign, period: str, key: str, seed: int | None) -> int:
    if campaign.renders == "fresh":
        return derived_seed(key, period)
    return seed if seed is not None else derived_seed(key)


def _render(campaign: Campaign, product: Product, chosen: Mapping[str, AxisValue]) -> str:
    values = {"product": product.prompt or IMAGE_ONLY_PRODUCT, "sku": product.sku}
    for axis in campaign.prompt_axes:
        values[axis.label] = values[axis.name] = chosen[axis.label].text
    return campaign.prompt_template.format_map(values)


def variant_job_id(name: str, period: str, variant_key: str) -> str:
    """The job id of one variant in one period: ``c-<name[:40]>-<32 hex digits>``."""
    digest = hashlib.sha256(f"{name}\n{period}\n{variant_key}".encode()).hexdigest()
    return f"c-{name[:40]}-{digest[:32]}"


def conversation_id(name: str, period: str) -> str:
    """The conversation (storage folder) of one campaign run: ``campaign-<name>-<period>``."""
    return f"campaign-{name}-{period.replace(':', '')}"


def derived_seed(variant_key: str, period: str | None = None) -> int:
    """A variant's seed when the file does not fix it: stable, below 2**31.

    Without ``period`` (``renders: same``, no ``seeds`` axis) it is the same every period;
    with it (``renders: fresh``) it differs from period to period.
    """
    text = f"seed\n{variant_key}" if period is None else f"seed\n{period}\n{variant_key}"
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") % _SEED_RANGE


def job_fields(campaign: Campaign, variant: Variant,
               source_image: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``new_job(variant.kind, ...)``: the variant plus the defaults.

    ``source_image`` is the storage key of the variant's image (after uploading a local
    file); edit variants need it. ``strength`` is left out for generate variants.
    """
    fields = _applicable(campaign.defaults, variant.kind)
    fields.update(job_id=variant.job_id, conversation_id=variant.conversation_id,
                  prompt=variant.prompt, seed=variant.seed, width=variant.width,
                  height=variant.height, tags=dict(variant.tags))
    if variant.kind is JobKind.EDIT:
        fields["source_image"] = source_image
    return fields


# --- small validators ----------------------------------------------------------------------


def _applicable(defaults: Mapping[str, Any], kind: JobKind) -> dict[str, Any]:
    fields = dict(defaults)
    if kind is JobKind.GENERATE:
        fields.pop("strength", None)
    return fields


def _mapping(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidJob(path, "a mapping of field names to values", value)
    for key in value:
        if not isinstance(key, str):
            raise InvalidJob(path, "field names must be strings", key)
    return value


def _reject_unknown(data: Mapping[str, Any], allowed: frozenset[str], prefix: str,
                    what: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise InvalidJob(f"{prefix}{unknown[0]}", f"is not a known {what} field; use "
                         + ", ".join(sorted(allowed)))


def _required(data: Mapping[str, Any], key: str, path: str = "") -> Any:
    if data.get(key) is None:
        raise InvalidJob(f"{path}.{key}" if path else key, "is required")
    return data[key]


def _identifier(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise InvalidJob(path, f"a string of {_ID_RULE} (quote it in YAML)", value)
    if len(value) > MAX_NAME_CHARS or not ID_PATTERN.fullmatch(value):
        raise InvalidJob(path, _ID_RULE, value)
    return value


def _text(value: object, path: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidJob(path, "a non-empty string", value)
    if len(value) > limit:
        raise InvalidJob(path, f"at most {limit} characters", len(value))
    return value


def _unique(values: list[_T], path: str) -> tuple[_T, ...]:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise InvalidJob(f"{path}[{i}]", f"duplicates {path}[{values.index(value)}]", value)
    return tuple(values)
