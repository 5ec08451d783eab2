"""Campaign files: loading YAML and JSON, validation naming the field path, expansion."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.errors import InvalidJob
from common.job import ID_PATTERN, MAX_PROMPT_CHARS, JobKind, new_job
from producer.campaign import (
    MAX_VARIANTS,
    Campaign,
    Variant,
    expand,
    job_fields,
    load_campaign,
    parse_campaign,
)
from producer.campaign_run import current_period, previous_period

PERIOD = "2026-11-23T09:00Z"
NEXT_PERIOD = "2026-11-30T09:00Z"

# The acceptance example: 2 products x 3 backgrounds x 2 sizes = 12 variants.
SPEC: dict[str, Any] = {
    "name": "spring-sale",
    "schedule": "0 9 * * mon",
    "webhook": "https://hooks.example.com/zq",
    "defaults": {"steps": 8, "priority": 3, "output_format": "webp", "strength": 0.6,
                 "negative_prompt": "text, watermark"},
    "products": [
        {"sku": "A1", "prompt": "a glass perfume bottle"},
        {"sku": "B2", "image": "photos/b2.png", "prompt": "the white sneaker"},
    ],
    "axes": {
        "backgrounds": ["white marble", {"key": "beach", "text": "a sandy beach at sunset"},
                        "concrete"],
        "sizes": ["1024x1024", "768x1344"],
    },
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "b2.png").write_bytes(b"not decoded here")
    return tmp_path


def write(folder: Path, name: str, data: object) -> Path:
    path = folder / name
    if name.endswith(".json"):
        path.write_text(json.dumps(data))
    else:
        path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def load(folder: Path, data: object, name: str = "campaign.yaml") -> Campaign:
    return load_campaign(write(folder, name, data))


def spec(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(SPEC)
    data.update(changes)
    return data


# --- loading -------------------------------------------------------------------------------


def test_yaml_file(folder: Path) -> None:
    campaign = load(folder, SPEC)
    assert campaign.name == "spring-sale"
    assert campaign.schedule == "0 9 * * mon"
    assert campaign.cron.fields == "0 9 * * mon"
    assert (campaign.timezone, campaign.renders) == ("UTC", "same")
    assert campaign.webhook == "https://hooks.example.com/zq"
    assert campaign.sizes == ((1024, 1024), (768, 1344))
    assert campaign.seeds == ()
    assert [a.label for a in campaign.prompt_axes] == ["background"]
    assert [v.key for v in campaign.prompt_axes[0].values] == ["white-marble", "beach",
                                                               "concrete"]
    assert campaign.prompt_template == "{product}, on {background}"
    assert campaign.products[1].image == str((folder / "photos" / "b2.png").resolve())
    assert campaign.source == folder / "campaign.yaml"
    assert campaign.variant_count == 12


def test_json_file_gives_the_same_campaign(folder: Path) -> None:
    from_yaml = load(folder, SPEC)
    from_json = load(folder, SPEC, "campaign.json")
    assert expand(from_json, PERIOD) == expand(from_yaml, PERIOD)


@pytest.mark.parametrize("as_json", [True, False])
def test_content_sniffing_without_a_known_extension(folder: Path, as_json: bool) -> None:
    path = folder / "campaign.txt"
    path.write_text(json.dumps(SPEC) if as_json else yaml.safe_dump(SPEC))
    assert load_campaign(path).variant_count == 12


def test_handwritten_yaml_with_comments_and_flow_mappings(folder: Path) -> None:
    path = folder / "c.yml"
    path.write_text(
        "name: spring-sale   # the campaign\n"
        'schedule: "@weekly"\n'
        "products:\n"
        "  - {sku: A1, prompt: a glass perfume bottle}\n"
        "axes:\n"
        "  backgrounds: [white marble, {key: beach, text: a sandy beach}]\n"
        "  styles: [studio, film]\n"
        '  sizes: ["1024x1024"]\n'
        "  seeds: [1, 2]\n")
    campaign = load_campaign(path)
    variants = expand(campaign, PERIOD)
    assert len(variants) == 2 * 2 * 2
    assert variants[0].prompt == "a glass perfume bottle, on white marble, studio style"
    by_key = {v.variant_key: v for v in variants}
    assert by_key["sku=A1/background=beach/style=film/size=1024x1024/seed=2"].prompt == (
        "a glass perfume bottle, on a sandy beach, film style")


@pytest.mark.parametrize(("text", "problem"), [
    ("name: [unclosed", "must be valid YAML"),
    ("- just\n- a list\n", "a mapping"),
    ("", "a mapping"),
])
def test_unreadable_documents(folder: Path, text: str, problem: str) -> None:
    path = folder / "c.yaml"
    path.write_text(text)
    with pytest.raises(InvalidJob) as caught:
        load_campaign(path)
    assert caught.value.field == "campaign"
    assert problem in caught.value.limit


def test_bad_json_names_the_line(folder: Path) -> None:
    path = folder / "c.json"
    path.write_text('{"name": "x",\n "schedule": }')
    with pytest.raises(InvalidJob, match=r"must be valid JSON: .* line 2") as caught:
        load_campaign(path)
    assert caught.value.field == "campaign"


def test_missing_file(folder: Path) -> None:
    with pytest.raises(InvalidJob, match="cannot read file") as caught:
        load_campaign(folder / "nope.yaml")
    assert caught.value.field == "campaign"


def test_image_storage_key_is_kept(folder: Path) -> None:
    data = spec()
    data["products"][1]["image"] = "uploads/ab/abcdef.png"
    assert load(folder, data).products[1].image == "uploads/ab/abcdef.png"


def test_parse_campaign_resolves_images_against_base_dir(folder: Path) -> None:
    campaign = parse_campaign(copy.deepcopy(SPEC), base_dir=folder)
    assert campaign.products[1].image == str((folder / "photos" / "b2.png").resolve())
    assert campaign.source is None


# --- validation errors name the field path -------------------------------------------------


def _mutate(path: str, value: Any) -> dict[str, Any]:
    """A copy of SPEC with the dotted ``path`` (list indexes as ints) set to ``value``."""
    data = copy.deepcopy(SPEC)
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = data
    for part in parents:
        target = target[part]
    target[last] = value
    return data


@pytest.mark.parametrize(("path", "value", "field", "problem"), [
    ("name", "spring sale!", "name", "letters, digits"),
    ("name", "x" * 65, "name", "1-64 characters"),
    ("schedule", "61 * * * *", "schedule", "minute field"),
    ("schedule", None, "schedule", "is required"),
    ("schedule", "0 9 * * mon#6", "schedule", "day-of-week field"),
    ("schedule", "0 0 9 * * mon", "schedule", "got 6 fields"),
    ("timezone", "Europe/Parisss", "timezone", "IANA time zone name"),
    ("timezone", "CET+1", "timezone", "IANA time zone name"),
    ("timezone", 1, "timezone", "IANA time zone name"),
    ("timezone", None, "timezone", "IANA time zone name"),
    ("renders", "new", "renders", "same (every period renders the same images) or fresh"),
    ("renders", True, "renders", "or fresh"),
    ("webhook", "ftp://example.com", "webhook", "http(s) URL"),
    ("colour", "red", "colour", "not a known campaign field"),
    ("products", [], "products", "non-empty list"),
    ("products.0", "A1", "products[0]", "a mapping"),
    ("products.0", {"sku": "A1"}, "products[0]", "a prompt, an image, or both"),
    ("products.0.sku", 12345, "products[0].sku", "quote it in YAML"),
    ("products.0.sku", None, "products[0].sku", "is required"),
    ("products.1.sku", "A1", "products[1].sku", "products[0] has it too"),
    ("products.0.prompt", "", "products[0].prompt", "non-empty string"),
    ("products.0.prompt", "x" * (MAX_PROMPT_CHARS + 1), "products[0].prompt", "at most"),
    ("products.0.colour", "red", "products[0].colour", "not a known product field"),
    ("products.1.image", "../elsewhere/missing.png", "products[1].image", "storage key"),
    ("products.1.image", "/no/such/file.png", "products[1].image", "storage key"),
    ("products.1.image", 7, "products[1].image", "storage key"),
    ("axes", ["backgrounds"], "axes", "a mapping"),
    ("axes.backgrounds", [], "axes.backgrounds", "non-empty list"),
    ("axes.backgrounds", "marble", "axes.backgrounds", "non-empty list"),
    ("axes.backgrounds", ["marble", "Marble"], "axes.backgrounds[1]",
     "duplicates axes.backgrounds[0]"),
    ("axes.backgrounds", ["marble", True], "axes.backgrounds[1]", "non-empty string"),
    ("axes.backgrounds", ["大理石"], "axes.backgrounds[0]", "give {key: ..., text: ...}"),
    ("axes.backgrounds", [{"key": "m"}], "axes.backgrounds[0].text", "is required"),
    ("axes.backgrounds", [{"key": "a b", "text": "x"}], "axes.backgrounds[0].key",
     "letters, digits"),
    ("axes.backgrounds", [{"key": "m", "text": "x", "x": 1}], "axes.backgrounds[0].x",
     "not a known axis value field"),
    ("axes.Moods", ["calm"], "axes.Moods", "an axis name"),
    ("axes.products", ["x"], "axes.products", "reserved"),
    ("axes.background", ["x"], "axes.background", "differ beyond a trailing 's'"),
    ("axes.sizes", ["1000x1000"], "axes.sizes[0]", "multiples of 16"),
    ("axes.sizes", ["1024x1024", "4096x4096"], "axes.sizes[1]", "at most 4194304 pixels"),
    ("axes.sizes", ["1024x8192"], "axes.sizes[0]", "between 16 and 4096"),
    ("axes.sizes", ["big"], "axes.sizes[0]", "WIDTHxHEIGHT"),
    ("axes.sizes", [1024], "axes.sizes[0]", "WIDTHxHEIGHT"),
    ("axes.sizes", ["1024x1024", "1024x1024"], "axes.sizes[1]", "duplicates"),
    ("axes.seeds", [1, -1], "axes.seeds[1]", "between 0 and"),
    ("axes.seeds", [True], "axes.seeds[0]", "an integer"),
    ("axes.seeds", ["1"], "axes.seeds[0]", "an integer"),
    ("defaults.steps", 500, "defaults.steps", "between 1 and 150"),
    ("defaults.strength", 2, "defaults.strength", "at most 1"),
    ("defaults.output_format", "gif", "defaults.output_format", "png, webp, jpeg"),
    ("defaults.model", "edit", "defaults.model", "needs an image"),
    ("defaults.seed", 3, "defaults.seed", "not a campaign default"),
    ("defaults.width", 512, "defaults.width", "not a campaign default"),
    ("prompt_template", "{product} on {colour}", "prompt_template", "not {colour}"),
    ("prompt_template", "{product} alone", "prompt_template", "{background} is missing"),
    ("prompt_template", "on {background}", "prompt_template", "must use {product}"),
    ("prompt_template", "{product} {background", "prompt_template", "a valid template"),
    ("prompt_template", "{product} {background:{x}}", "prompt_template", "cannot be rendered"),
])
def test_validation_names_the_field(folder: Path, path: str, value: Any, field: str,
                                    problem: str) -> None:
    with pytest.raises(InvalidJob) as caught:
        load(folder, _mutate(path, value))
    assert caught.value.field == field
    assert problem in caught.value.limit


def test_too_many_variants(folder: Path) -> None:
    data = spec()
    data["axes"]["seeds"] = list(range(MAX_VARIANTS // 12 + 1))
    with pytest.raises(InvalidJob, match=f"at most {MAX_VARIANTS} variants") as caught:
        load(folder, data)
    assert caught.value.field == "axes"


def test_rendered_prompts_must_fit(folder: Path) -> None:
    data = spec()
    data["products"][0]["prompt"] = "p" * (MAX_PROMPT_CHARS - 10)
    with pytest.raises(InvalidJob, match=r"products\[0\] reaches") as caught:
        load(folder, data)
    assert caught.value.field == "prompt_template"


# --- expansion -----------------------------------------------------------------------------


def test_two_products_three_backgrounds_two_sizes_give_twelve_variants(folder: Path) -> None:
    campaign = load(folder, SPEC)
    first = expand(campaign, PERIOD)
    again = expand(load(folder, SPEC), PERIOD)
    assert len(first) == 12
    assert len({v.job_id for v in first}) == 12
    assert len({v.variant_key for v in first}) == 12
    # Running the same period twice asks for the same 12 images, not 24.
    assert [v.job_id for v in again] == [v.job_id for v in first]
    assert len({v.job_id for v in first + again}) == 12
    assert first == again
    later = expand(campaign, NEXT_PERIOD)
    assert not {v.job_id for v in later} & {v.job_id for v in first}
    assert [v.variant_key for v in later] == [v.variant_key for v in first]


def test_every_variant_is_a_valid_job(folder: Path) -> None:
    campaign = load(folder, SPEC)
    for variant in expand(campaign, PERIOD):
        options: dict[str, Any] = dict(campaign.defaults)
        if variant.kind is JobKind.EDIT:
            options["source_image"] = "uploads/x.png"
        else:
            options.pop("strength")
        job = new_job(variant.kind, job_id=variant.job_id,
                      conversation_id=variant.conversation_id, prompt=variant.prompt,
                      width=variant.width, height=variant.height, seed=variant.seed,
                      tags=variant.tags, **options)
        assert job.job_id == variant.job_id
        assert (job.width, job.height) == (variant.width, variant.height)
        built = new_job(variant.kind, **job_fields(campaign, variant, "uploads/x.png"))
        assert built == job


def test_variant_fields(folder: Path) -> None:
    campaign = load(folder, SPEC)
    variants = {v.variant_key: v for v in expand(campaign, PERIOD)}
    generate = variants["sku=A1/background=white-marble/size=1024x1024"]
    assert generate.kind is JobKind.GENERATE
    assert generate.prompt == "a glass perfume bottle, on white marble"
    assert generate.image is None
    assert (generate.width, generate.height) == (1024, 1024)
    assert generate.tags == {"campaign": "spring-sale", "period": PERIOD, "sku": "A1",
                             "background": "white-marble", "size": "1024x1024"}
    assert generate.conversation_id == "campaign-spring-sale-2026-11-23T0900Z"
    assert generate.job_id.startswith("c-spring-sale-")
    edit = variants["sku=B2/background=beach/size=768x1344"]
    assert edit.kind is JobKind.EDIT
    assert edit.prompt == "the white sneaker, on a sandy beach at sunset"
    assert edit.image == str((folder / "photos" / "b2.png").resolve())
    assert (edit.width, edit.height) == (768, 1344)


def test_job_fields_drop_strength_for_generate(folder: Path) -> None:
    campaign = load(folder, SPEC)
    variants = expand(campaign, PERIOD)
    generate = next(v for v in variants if v.kind is JobKind.GENERATE)
    edit = next(v for v in variants if v.kind is JobKind.EDIT)
    assert "strength" not in job_fields(campaign, generate)
    assert "source_image" not in job_fields(campaign, generate)
    fields = job_fields(campaign, edit, "uploads/x.png")
    assert (fields["strength"], fields["source_image"]) == (0.6, "uploads/x.png")
    assert new_job(edit.kind, **fields).strength == 0.6


def test_seeds_without_an_axis_are_stable_and_differ_by_variant(folder: Path) -> None:
    variants = expand(load(folder, SPEC), PERIOD)
    seeds = [v.seed for v in variants]
    assert seeds == [v.seed for v in expand(load(folder, SPEC), NEXT_PERIOD)]
    assert len(set(seeds)) == 12
    assert all(0 <= s < 2**31 for s in seeds)


def test_seed_axis(folder: Path) -> None:
    data = spec()
    data["axes"]["seeds"] = [1, 2]
    variants = expand(load(folder, data), PERIOD)
    assert len(variants) == 24
    assert {v.seed for v in variants} == {1, 2}
    assert variants[0].variant_key == "sku=A1/background=white-marble/size=1024x1024/seed=1"
    assert variants[0].tags["seed"] == "1"


def test_variant_keys_ignore_axis_order_in_the_file(folder: Path) -> None:
    data = spec()
    data["axes"] = {"sizes": ["1024x1024"], "styles": ["studio"], "backgrounds": ["marble"]}
    reordered = spec()
    reordered["axes"] = {"backgrounds": ["marble"], "styles": ["studio"],
                         "sizes": ["1024x1024"]}
    keys = [v.variant_key for v in expand(load(folder, data), PERIOD)]
    assert keys == [v.variant_key for v in expand(load(folder, reordered), PERIOD)]
    assert keys[0] == "sku=A1/background=marble/style=studio/size=1024x1024"


def test_custom_template_and_custom_axis(folder: Path) -> None:
    data = spec(prompt_template="{sku}: {product}. {mood} mood, {backgrounds} backdrop")
    data["axes"]["moods"] = ["calm"]
    campaign = load(folder, data)
    variant = expand(campaign, PERIOD)[0]
    assert variant.prompt == "A1: a glass perfume bottle. calm mood, white marble backdrop"
    assert variant.tags["mood"] == "calm"
    assert variant.variant_key == "sku=A1/background=white-marble/mood=calm/size=1024x1024"


def test_image_only_product_without_axes(folder: Path) -> None:
    campaign = load(folder, {"name": "c", "schedule": "@daily",
                             "products": [{"sku": "B2", "image": "photos/b2.png"}]})
    [variant] = expand(campaign, PERIOD)
    assert variant.kind is JobKind.EDIT
    assert variant.prompt == "the product"
    assert variant.variant_key == "sku=B2"
    assert (variant.width, variant.height) == (None, None)
    new_job(variant.kind, **job_fields(campaign, variant, "uploads/x.png"))


def test_ids_are_safe_for_the_longest_names(folder: Path) -> None:
    name = "n" * 64
    campaign = load(folder, spec(name=name))
    for variant in expand(campaign, PERIOD):
        assert ID_PATTERN.fullmatch(variant.job_id)
        assert len(variant.job_id) <= 100
        assert ID_PATTERN.fullmatch(variant.conversation_id)


def test_expand_refuses_a_bad_period(folder: Path) -> None:
    with pytest.raises(InvalidJob) as caught:
        expand(load(folder, SPEC), "2026-11-23 09:00")
    assert caught.value.field == "period"


# --- time zones and renders ----------------------------------------------------------------


def test_timezone_moves_the_ticks_and_period_ids_stay_utc(folder: Path) -> None:
    campaign = load(folder, spec(timezone="Europe/Paris"))
    assert campaign.timezone == "Europe/Paris"
    # Monday 09:00 in Paris: 08:00Z in winter, 07:00Z in summer.
    assert current_period(campaign, datetime(2026, 11, 23, 8, 30, tzinfo=UTC)) == (
        "2026-11-23T08:00Z")
    assert current_period(campaign, datetime(2026, 11, 23, 7, 59, tzinfo=UTC)) == (
        "2026-11-16T08:00Z")
    assert current_period(campaign, datetime(2026, 7, 6, 7, 0, tzinfo=UTC)) == (
        "2026-07-06T07:00Z")
    # Across the change to summer time (29 March 2026) the gap is a week less an hour.
    assert previous_period(campaign, "2026-03-30T07:00Z") == "2026-03-23T08:00Z"
    utc_campaign = load(folder, SPEC)
    assert current_period(utc_campaign, datetime(2026, 11, 23, 9, tzinfo=UTC)) == PERIOD
    assert [v.job_id for v in expand(campaign, PERIOD)] == [
        v.job_id for v in expand(utc_campaign, PERIOD)]


def test_timezone_in_a_handwritten_file(folder: Path) -> None:
    path = folder / "c.yaml"
    path.write_text('name: c\nschedule: "0 9 L * *"\ntimezone: America/New_York\n'
                    "renders: fresh\nproducts: [{sku: A1, prompt: a bottle}]\n")
    campaign = load_campaign(path)
    assert (campaign.timezone, campaign.renders) == ("America/New_York", "fresh")
    assert campaign.cron.next(datetime(2026, 1, 1, tzinfo=UTC)) == datetime(
        2026, 1, 31, 14, tzinfo=UTC)


@pytest.mark.parametrize("seeds", [None, [1, 2]])
def test_same_renders_repeat_seeds_and_fresh_renders_change_them(folder: Path,
                                                                 seeds: list[int] | None) -> None:
    data = spec()
    if seeds is not None:
        data["axes"]["seeds"] = seeds
    same = load(folder, data)
    fresh = load(folder, {**data, "renders": "fresh"})
    runs: dict[tuple[str, str], list[Variant]] = {
        (c.renders, p): expand(c, p) for c in (same, fresh) for p in (PERIOD, NEXT_PERIOD)}
    keys = [v.variant_key for v in runs["same", PERIOD]]
    assert all([v.variant_key for v in run] == keys for run in runs.values())

    def seeds_of(renders: str, period: str) -> list[int]:
        return [v.seed for v in runs[renders, period]]

    def ids_of(renders: str, period: str) -> list[str]:
        return [v.job_id for v in runs[renders, period]]

    assert seeds_of("same", PERIOD) == seeds_of("same", NEXT_PERIOD)
    if seeds is not None:
        assert set(seeds_of("same", PERIOD)) == set(seeds)
    fresh_now, fresh_next = seeds_of("fresh", PERIOD), seeds_of("fresh", NEXT_PERIOD)
    assert all(a != b for a, b in zip(fresh_now, fresh_next, strict=True))
    assert len(set(fresh_now)) == len(fresh_now)  # a seeds axis still gives distinct seeds
    assert all(0 <= s < 2**31 for s in fresh_now + fresh_next)
    assert not set(fresh_now) & set(seeds_of("same", PERIOD))
    # Job ids name (campaign, period, variant): new every period, and the same period
    # always asks for the same jobs, fresh or not.
    for renders in ("same", "fresh"):
        assert not set(ids_of(renders, PERIOD)) & set(ids_of(renders, NEXT_PERIOD))
    assert ids_of("fresh", PERIOD) == ids_of("same", PERIOD)
    assert expand(load(folder, {**data, "renders": "fresh"}), PERIOD) == runs["fresh", PERIOD]
    for variant in runs["fresh", NEXT_PERIOD]:
        new_job(variant.kind, **job_fields(fresh, variant, "uploads/x.png"))
