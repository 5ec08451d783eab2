"""Settings: read from the environment once, into one typed object, passed explicitly."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from common.errors import ConfigError
from common.job import ModelType
from common.webhooks import redact_url

# Released checkpoints. No edit checkpoint is published yet, so the edit worker
# derives image-to-image and inpainting from the turbo weights.
DEFAULT_MODEL_SOURCES: dict[ModelType, str] = {
    ModelType.TURBO: "Tongyi-MAI/Z-Image-Turbo",
    ModelType.EDIT: "Tongyi-MAI/Z-Image-Turbo",
    ModelType.BASE: "Tongyi-MAI/Z-Image",
}


@dataclass(frozen=True)
class Settings:
    """Everything a producer or worker is configured with. See README, "Configuration"."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    # Independent Redis instances a fleet is sharded over (producers, API, exporter and
    # dispatchers use them all; a worker serves the one in redis_url). Empty: one Redis.
    redis_shards: tuple[str, ...] = ()
    storage_url: str = "file://./zq-data"
    s3_endpoint_url: str | None = None
    # None: boto3's own region chain (AWS_REGION, AWS_DEFAULT_REGION, ~/.aws/config).
    s3_region: str | None = None
    model_sources: dict[ModelType, str] = field(
        default_factory=lambda: dict(DEFAULT_MODEL_SOURCES)
    )
    device: str = "auto"
    # "auto": bfloat16 on a GPU, float32 on a CPU (where bfloat16 also works, slowly).
    dtype: str = "auto"
    cpu_offload: bool = False
    # "" keeps diffusers' default attention; else a name of its AttentionBackendName.
    attention_backend: str = ""
    compile: bool = False
    fp8: bool = False
    job_timeout_s: int = 1800
    # A rendering job without progress (a step, a phase) this long is stuck in the model:
    # the worker gives it up and exits (0: never). Far above the slowest real step (seconds;
    # a first-step recompile, minutes), far below the job timeout, which a hung step never
    # reaches (it is checked between steps).
    stall_timeout_s: int = 600
    lease_ttl_s: int = 15
    max_deliveries: int = 3
    prompt_cache_size: int = 256
    latent_cache_size: int = 32
    presign_expiry_s: int = 3600
    key_prefix: str = "zq"
    metrics_port: int = 9400
    # (width, height) of each warm-up render: the sizes served most (and compiled for).
    warmup_sizes_px: tuple[tuple[int, int], ...] = ((64, 64),)
    max_wait_s: int = 3600
    exporter_port: int = 9401
    # Rendered jobs that may wait for the finisher thread; 0 stores inline (GPU waits).
    handoff_depth: int = 1
    # zlib level for PNG results: 1 is ~25% faster than Pillow's 6 for ~10% more bytes.
    png_compress_level: int = 1
    # Listeners bind here: loopback by default (the chart sets the pod IP).
    metrics_addr: str = "127.0.0.1"
    exporter_addr: str = "127.0.0.1"
    # Input images (parent, source, mask): refused above this many pixels before decoding.
    max_input_pixels: int = 64_000_000
    # ... and above this many bytes, before anything is read into Pillow.
    max_input_bytes: int = 64 * 1024 * 1024
    # An input larger than the render limit is "resize"d to fit, or "refuse"d (input_invalid).
    oversize_input: str = "resize"
    # Transparent inputs are composited on this colour (RGB).
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    # Webhook hosts allowed although they resolve to private, loopback or link-local
    # addresses: host names, IP addresses or CIDR networks.
    webhook_allow: tuple[str, ...] = ()
    # Terminal job, batch and webhook records expire after this long; 0 keeps them.
    record_ttl_s: int = 30 * 24 * 3600
    # A job that meets storage or Redis trouble is retried for this long, off the worker...
    infra_retry_budget_s: int = 600
    # ... and then "fail"s with storage_unavailable, or "wait"s for the outage to end.
    infra_outage: str = "fail"
    # Broker messages no worker can run are kept, newest first, up to this many.
    dead_letter_max: int = 10_000
    # `zq api`: requests per second each API key (or client address) may make, and the
    # burst it may save up; counted per replica.
    api_rate_per_s: int = 20
    api_rate_burst: int = 40
    # Celery's task events (what Flower shows): two publishes per job. A fleet too large
    # for one Flower to follow can turn them off and save Redis the round trips.
    task_events: bool = True
    # LoRA adapters a worker keeps loaded (least recently used out past this many MiB),
    # and where it keeps their files ("": a folder in the system's temp directory).
    adapter_cache_mb: int = 2048
    adapter_dir: str = ""
    # With ZQ_COMPILE, adapters are hot-swapped into this many slots compiled in at start-up,
    # each of this LoRA rank: a job's adapter of a higher rank is refused (the slots' memory
    # and per-step cost grow with both).
    adapter_slots: int = 2
    adapter_max_rank: int = 64
    # A job naming adapters this worker does not hold is passed, once, to an idle worker
    # that holds them; if that worker has not taken it within this many seconds, it goes
    # back to the shared queue (0: never pass; README, "Which worker runs an adapter job").
    adapter_pass_s: int = 10
    # The safety gate (README, "Safety gate"): off unless a model, a blocklist or a plug-in
    # gate is set. An image classifier (hub id[@rev] or directory) and the labels of it that
    # count as unsafe at or above the threshold.
    safety_model: str = ""
    safety_threshold: float = 0.5
    safety_labels: tuple[str, ...] = ("nsfw",)
    # The prompt gate: a text classifier and/or blocked words, phrases and ``re:`` patterns.
    safety_prompt_model: str = ""
    safety_prompt_threshold: float = 0.5
    safety_prompt_labels: tuple[str, ...] = ("nsfw",)
    safety_prompt_blocklist: tuple[str, ...] = ()
    safety_prompt_blocklist_file: str = ""
    # A gate of the operator's own: an entry point name in the zimage_queue.safety_gates group.
    safety_gate: str = ""

    @property
    def safety_enabled(self) -> bool:
        """Whether workers run a safety gate at all."""
        return bool(self.safety_model or self.safety_prompt_model or self.safety_prompt_blocklist
                    or self.safety_prompt_blocklist_file or self.safety_gate)

    @property
    def shard_urls(self) -> tuple[str, ...]:
        """The Redis of every shard, in routing order: ``redis_shards``, else ``redis_url``."""
        return self.redis_shards or (self.redis_url,)

    @property
    def visibility_timeout_s(self) -> int:
        """Above the longest job, so Redis never redelivers a job that is still running."""
        return self.job_timeout_s * 2 + 60

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``ZQ_*`` variables into settings; S3 credentials are boto3's own chain."""
        env = os.environ if env is None else env
        base = cls()
        sources = dict(base.model_sources)
        for model in ModelType:
            value = env.get(f"ZQ_MODEL_{model.value.upper()}")
            if value:
                sources[model] = value
        return replace(
            base,
            redis_url=_redis_url(env.get("ZQ_REDIS_URL") or base.redis_url),
            redis_shards=_redis_shards(env.get("ZQ_REDIS_SHARDS", "")),
            storage_url=env.get("ZQ_STORAGE_URL", base.storage_url),
            s3_endpoint_url=env.get("ZQ_S3_ENDPOINT_URL") or None,
            s3_region=env.get("ZQ_S3_REGION") or None,
            model_sources=sources,
            device=env.get("ZQ_DEVICE", base.device),
            dtype=_dtype(env.get("ZQ_DTYPE") or base.dtype),
            cpu_offload=_flag(env, "ZQ_CPU_OFFLOAD", base.cpu_offload),
            attention_backend=env.get("ZQ_ATTENTION_BACKEND", base.attention_backend).strip(),
            compile=_flag(env, "ZQ_COMPILE", base.compile),
            fp8=_flag(env, "ZQ_FP8", base.fp8),
            job_timeout_s=_int(env, "ZQ_JOB_TIMEOUT_S", base.job_timeout_s, 1),
            stall_timeout_s=_int(env, "ZQ_STALL_TIMEOUT_S", base.stall_timeout_s, 0),
            lease_ttl_s=_int(env, "ZQ_LEASE_TTL_S", base.lease_ttl_s, 3),
            max_deliveries=_int(env, "ZQ_MAX_DELIVERIES", base.max_deliveries, 1),
            prompt_cache_size=_int(env, "ZQ_PROMPT_CACHE_SIZE", base.prompt_cache_size, 0),
            latent_cache_size=_int(env, "ZQ_LATENT_CACHE_SIZE", base.latent_cache_size, 0),
            presign_expiry_s=_int(env, "ZQ_PRESIGN_EXPIRY_S", base.presign_expiry_s, 1),
            key_prefix=env.get("ZQ_KEY_PREFIX", base.key_prefix),
            metrics_port=_int(env, "ZQ_METRICS_PORT", base.metrics_port, 0),
            warmup_sizes_px=_sizes(env, "ZQ_WARMUP_SIZE_PX", base.warmup_sizes_px),
            max_wait_s=_int(env, "ZQ_MAX_WAIT_S", base.max_wait_s, 0),
            exporter_port=_int(env, "ZQ_EXPORTER_PORT", base.exporter_port, 1),
            handoff_depth=_int(env, "ZQ_HANDOFF_DEPTH", base.handoff_depth, 0, maximum=8),
            png_compress_level=_int(env, "ZQ_PNG_COMPRESS_LEVEL", base.png_compress_level, 0,
                                    maximum=9),
            metrics_addr=env.get("ZQ_METRICS_ADDR", "").strip() or base.metrics_addr,
            exporter_addr=env.get("ZQ_EXPORTER_ADDR", "").strip() or base.exporter_addr,
            # Pillow refuses more than this itself (its decompression-bomb limit).
            max_input_pixels=_int(env, "ZQ_MAX_INPUT_PIXELS", base.max_input_pixels, 4096,
                                  maximum=89_478_485),
            max_input_bytes=_int(env, "ZQ_MAX_INPUT_BYTES", base.max_input_bytes, 1024),
            oversize_input=_choice(env, "ZQ_OVERSIZE_INPUT", base.oversize_input,
                                   ("resize", "refuse")),
            alpha_background=_colour(env, "ZQ_ALPHA_BACKGROUND", base.alpha_background),
            webhook_allow=_words(env, "ZQ_WEBHOOK_ALLOW", base.webhook_allow),
            record_ttl_s=_int(env, "ZQ_RECORD_TTL_S", base.record_ttl_s, 0),
            infra_retry_budget_s=_int(env, "ZQ_INFRA_RETRY_BUDGET_S", base.infra_retry_budget_s,
                                      0),
            infra_outage=_choice(env, "ZQ_INFRA_OUTAGE", base.infra_outage, ("fail", "wait")),
            dead_letter_max=_int(env, "ZQ_DEAD_LETTER_MAX", base.dead_letter_max, 1),
            api_rate_per_s=_int(env, "ZQ_API_RATE_PER_S", base.api_rate_per_s, 1),
            api_rate_burst=_int(env, "ZQ_API_RATE_BURST", base.api_rate_burst, 1),
            task_events=_flag(env, "ZQ_TASK_EVENTS", base.task_events),
            adapter_cache_mb=_int(env, "ZQ_ADAPTER_CACHE_MB", base.adapter_cache_mb, 0),
            adapter_dir=env.get("ZQ_ADAPTER_DIR", base.adapter_dir).strip(),
            adapter_slots=_int(env, "ZQ_ADAPTER_SLOTS", base.adapter_slots, 1),
            adapter_max_rank=_int(env, "ZQ_ADAPTER_MAX_RANK", base.adapter_max_rank, 1),
            adapter_pass_s=_int(env, "ZQ_ADAPTER_PASS_S", base.adapter_pass_s, 0),
            safety_model=env.get("ZQ_SAFETY_MODEL", "").strip(),
            safety_threshold=_fraction(env, "ZQ_SAFETY_THRESHOLD", base.safety_threshold),
            safety_labels=_words(env, "ZQ_SAFETY_LABELS", base.safety_labels),
            safety_prompt_model=env.get("ZQ_SAFETY_PROMPT_MODEL", "").strip(),
            safety_prompt_threshold=_fraction(env, "ZQ_SAFETY_PROMPT_THRESHOLD",
                                              base.safety_prompt_threshold),
            safety_prompt_labels=_words(env, "ZQ_SAFETY_PROMPT_LABELS",
                                        base.safety_prompt_labels),
            safety_prompt_blocklist=_blocklist(env.get("ZQ_SAFETY_PROMPT_BLOCKLIST", "")),
            safety_prompt_blocklist_file=env.get("ZQ_SAFETY_PROMPT_BLOCKLIST_FILE", "").strip(),
            safety_gate=env.get("ZQ_SAFETY_GATE", "").strip(),
        )


def _int(env: Mapping[str, str], name: str, default: int, minimum: int,
         maximum: int | None = None) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


DTYPE_NAMES: dict[str, str] = {
    "auto": "auto", "bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16",
    "fp16": "float16", "half": "float16", "float32": "float32", "fp32": "float32",
}


def _dtype(raw: str) -> str:
    try:
        return DTYPE_NAMES[raw.strip().lower()]
    except KeyError:
        raise ConfigError(f"ZQ_DTYPE must be one of auto, bfloat16, float16, float32; "
                          f"got {raw!r}") from None


_SIZE = re.compile(r"(\d{1,5})(?:x(\d{1,5}))?")


def _sizes(env: Mapping[str, str], name: str,
           default: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    """Comma-separated sizes, each ``SIDE`` or ``WIDTHxHEIGHT`` in pixels (16 to 4096)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    sizes = []
    for item in raw.split(","):
        match = _SIZE.fullmatch(item.strip().lower())
        if match is None:
            raise ConfigError(f"{name} must be sizes like 1024 or 768x1344, comma-separated; "
                              f"got {item.strip()!r}")
        size = (int(match[1]), int(match[2] or match[1]))
        if not all(16 <= side <= 4096 for side in size):
            raise ConfigError(f"{name}: each side must be 16 to 4096 pixels, got {item.strip()!r}")
        sizes.append(size)
    return tuple(sizes)


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {raw!r}")
    return raw


def _words(env: Mapping[str, str], name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated list, blanks dropped."""
    raw = env.get(name, "")
    words = tuple(word.strip() for word in raw.split(",") if word.strip())
    return words or default


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    """A number from 0 to 1 (a classifier score threshold)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number from 0 to 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be from 0 to 1, got {value}")
    return value


def _blocklist(raw: str, name: str = "ZQ_SAFETY_PROMPT_BLOCKLIST") -> tuple[str, ...]:
    """Comma-separated blocklist entries; each ``re:`` pattern must compile."""
    entries = tuple(entry.strip() for entry in raw.split(",") if entry.strip())
    for entry in entries:
        check_blocklist_entry(entry, name)
    return entries


def check_blocklist_entry(entry: str, name: str) -> None:
    """``ConfigError`` naming ``name`` when a ``re:`` entry is not a valid regex."""
    if entry.startswith("re:"):
        try:
            re.compile(entry[3:])
        except re.error as exc:
            raise ConfigError(f"{name}: {entry!r} is not a valid regular expression: "
                              f"{exc}") from None


_COLOURS = {"white": (255, 255, 255), "black": (0, 0, 0)}
_HEX_COLOUR = re.compile(r"#?([0-9a-f]{2})([0-9a-f]{2})([0-9a-f]{2})")


def _colour(env: Mapping[str, str], name: str,
            default: tuple[int, int, int]) -> tuple[int, int, int]:
    """``white``, ``black`` or a hex colour ``#rrggbb``."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in _COLOURS:
        return _COLOURS[raw]
    match = _HEX_COLOUR.fullmatch(raw)
    if match is None:
        raise ConfigError(f"{name} must be white, black or a colour like #f0f0f0; got {raw!r}")
    return (int(match[1], 16), int(match[2], 16), int(match[3], 16))


def _redis_url(raw: str, name: str = "ZQ_REDIS_URL") -> str:
    if not raw.strip().lower().startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{name} must start with redis://, rediss:// or unix://; "
                          f"got {raw[:60]!r}")
    return raw.strip()


MAX_SHARDS = 64


def _redis_shards(raw: str) -> tuple[str, ...]:
    """Comma- or space-separated Redis URLs; each distinct, at most ``MAX_SHARDS``."""
    urls = tuple(_redis_url(part, "ZQ_REDIS_SHARDS") for part in re.split(r"[\s,]+", raw)
                 if part)
    if len(urls) > MAX_SHARDS:
        raise ConfigError(f"ZQ_REDIS_SHARDS names {len(urls)} Redis; at most {MAX_SHARDS}")
    repeated = sorted({url for url in urls if urls.count(url) > 1})
    if repeated:
        raise ConfigError(f"ZQ_REDIS_SHARDS names {redact_url(repeated[0])!r} twice: each "
                          "shard is its own Redis")
    return urls
