"""Settings read from ``ZQ_*`` variables: defaults, overrides, and refusals."""

from __future__ import annotations

from typing import Any

import pytest

from common.errors import ConfigError
from common.job import ModelType
from common.settings import DEFAULT_MODEL_SOURCES, Settings


def test_defaults_from_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.storage_url == "file://./zq-data"
    assert settings.s3_endpoint_url is None
    assert settings.s3_region is None  # boto3 chooses: AWS_REGION, AWS_DEFAULT_REGION, config
    assert settings.model_sources == DEFAULT_MODEL_SOURCES
    assert settings.model_sources[ModelType.TURBO] == "Tongyi-MAI/Z-Image-Turbo"
    assert settings.model_sources[ModelType.BASE] == "Tongyi-MAI/Z-Image"
    assert settings.device == "auto"
    assert settings.cpu_offload is False
    assert settings.job_timeout_s == 1800
    assert settings.lease_ttl_s == 15
    assert settings.max_deliveries == 3
    assert settings.prompt_cache_size == 256
    assert settings.latent_cache_size == 32
    assert settings.presign_expiry_s == 3600
    assert settings.key_prefix == "zq"


def test_default_model_sources_are_not_shared() -> None:
    settings = Settings()
    settings.model_sources[ModelType.TURBO] = "changed"
    assert DEFAULT_MODEL_SOURCES[ModelType.TURBO] == "Tongyi-MAI/Z-Image-Turbo"
    assert Settings().model_sources[ModelType.TURBO] == "Tongyi-MAI/Z-Image-Turbo"


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZQ_KEY_PREFIX", "from-os")
    assert Settings.from_env().key_prefix == "from-os"


OVERRIDES: list[tuple[str, str, str, Any]] = [
    ("ZQ_REDIS_URL", "redis://cache:6380/2", "redis_url", "redis://cache:6380/2"),
    ("ZQ_STORAGE_URL", "s3://bucket/prefix", "storage_url", "s3://bucket/prefix"),
    ("ZQ_S3_ENDPOINT_URL", "http://rgw:7480", "s3_endpoint_url", "http://rgw:7480"),
    ("ZQ_S3_REGION", "eu-west-1", "s3_region", "eu-west-1"),
    ("ZQ_DEVICE", "cuda:1", "device", "cuda:1"),
    ("ZQ_CPU_OFFLOAD", "true", "cpu_offload", True),
    ("ZQ_JOB_TIMEOUT_S", "600", "job_timeout_s", 600),
    ("ZQ_LEASE_TTL_S", "30", "lease_ttl_s", 30),
    ("ZQ_MAX_DELIVERIES", "5", "max_deliveries", 5),
    ("ZQ_PROMPT_CACHE_SIZE", "0", "prompt_cache_size", 0),
    ("ZQ_LATENT_CACHE_SIZE", "7", "latent_cache_size", 7),
    ("ZQ_PRESIGN_EXPIRY_S", "120", "presign_expiry_s", 120),
    ("ZQ_KEY_PREFIX", "zq-test", "key_prefix", "zq-test"),
    ("ZQ_DTYPE", "bf16", "dtype", "bfloat16"),
    ("ZQ_ATTENTION_BACKEND", "_flash_3", "attention_backend", "_flash_3"),
    ("ZQ_COMPILE", "true", "compile", True),
    ("ZQ_FP8", "1", "fp8", True),
    ("ZQ_WARMUP_SIZE_PX", "1024, 768x1344", "warmup_sizes_px", ((1024, 1024), (768, 1344))),
    ("ZQ_PNG_COMPRESS_LEVEL", "6", "png_compress_level", 6),
    ("ZQ_HANDOFF_DEPTH", "0", "handoff_depth", 0),
    ("ZQ_TASK_EVENTS", "0", "task_events", False),
]


@pytest.mark.parametrize(("name", "raw", "attr", "expected"), OVERRIDES,
                         ids=[o[0] for o in OVERRIDES])
def test_env_override(name: str, raw: str, attr: str, expected: Any) -> None:
    settings = Settings.from_env({name: raw})
    assert getattr(settings, attr) == expected
    assert getattr(Settings(), attr) != expected  # the override really changed something
    # Nothing else moved.
    others = {k: v for k, v in vars(settings).items() if k != attr}
    assert others == {k: v for k, v in vars(Settings()).items() if k != attr}


@pytest.mark.parametrize("model", list(ModelType))
def test_model_source_override(model: ModelType) -> None:
    settings = Settings.from_env({f"ZQ_MODEL_{model.value.upper()}": "/models/local-copy"})
    assert settings.model_sources[model] == "/models/local-copy"
    for other in ModelType:
        if other is not model:
            assert settings.model_sources[other] == DEFAULT_MODEL_SOURCES[other]


def test_empty_values_fall_back_to_defaults() -> None:
    env = {
        "ZQ_S3_ENDPOINT_URL": "",
        "ZQ_MODEL_TURBO": "",
        "ZQ_CPU_OFFLOAD": "",
        "ZQ_JOB_TIMEOUT_S": "",
    }
    assert Settings.from_env(env) == Settings()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("TRUE", True), ("yes", True), ("On", True),
     ("0", False), ("false", False), ("No", False), ("off", False)],
)
def test_flag_spellings(raw: str, expected: bool) -> None:
    assert Settings.from_env({"ZQ_CPU_OFFLOAD": raw}).cpu_offload is expected


INT_VARS = [
    ("ZQ_JOB_TIMEOUT_S", 1),
    ("ZQ_LEASE_TTL_S", 3),
    ("ZQ_MAX_DELIVERIES", 1),
    ("ZQ_PROMPT_CACHE_SIZE", 0),
    ("ZQ_LATENT_CACHE_SIZE", 0),
    ("ZQ_PRESIGN_EXPIRY_S", 1),
]


@pytest.mark.parametrize(("name", "minimum"), INT_VARS, ids=[v[0] for v in INT_VARS])
@pytest.mark.parametrize("raw", ["ten", "1.5", "0x10"])
def test_bad_integer_names_the_variable(name: str, minimum: int, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: raw})
    assert name in str(info.value)
    assert "integer" in str(info.value)


@pytest.mark.parametrize(("name", "minimum"), INT_VARS, ids=[v[0] for v in INT_VARS])
def test_below_minimum_names_the_variable(name: str, minimum: int) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({name: str(minimum - 1)})
    assert name in str(info.value)
    assert f"at least {minimum}" in str(info.value)
    # The minimum itself is accepted.
    attr = name.removeprefix("ZQ_").lower()
    assert getattr(Settings.from_env({name: str(minimum)}), attr) == minimum


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled"])
def test_bad_flag_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ZQ_CPU_OFFLOAD": raw})
    assert "ZQ_CPU_OFFLOAD" in str(info.value)


@pytest.mark.parametrize("timeout", [1, 30, 1800, 86400])
def test_visibility_timeout_is_above_job_timeout(timeout: int) -> None:
    settings = Settings.from_env({"ZQ_JOB_TIMEOUT_S": str(timeout)})
    assert settings.job_timeout_s == timeout
    assert settings.visibility_timeout_s > settings.job_timeout_s


@pytest.mark.parametrize("raw", ["float8", "int4", "bfloat"])
def test_unknown_dtype_names_the_variable_and_the_choices(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ZQ_DTYPE": raw})
    assert "ZQ_DTYPE" in str(info.value) and "bfloat16" in str(info.value)


@pytest.mark.parametrize(("raw", "words"), [("big", "sizes like 1024"),
                                            ("1024x", "sizes like 1024"),
                                            ("8", "16 to 4096"), ("1024x8192", "16 to 4096")])
def test_bad_warmup_sizes_are_refused(raw: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ZQ_WARMUP_SIZE_PX": raw})
    assert "ZQ_WARMUP_SIZE_PX" in str(info.value) and words in str(info.value)


def test_png_compress_level_is_bounded() -> None:
    with pytest.raises(ConfigError, match="ZQ_PNG_COMPRESS_LEVEL must be at most 9"):
        Settings.from_env({"ZQ_PNG_COMPRESS_LEVEL": "10"})


def test_task_events_off_reach_celery_and_the_worker_command_line() -> None:
    from common.queueing import celery_config
    from worker.cli import worker_argv

    off = Settings.from_env({"ZQ_TASK_EVENTS": "false"})
    config = celery_config(off)
    assert (config["task_send_sent_event"], config["worker_send_task_events"]) == (False, False)
    assert "--task-events" not in worker_argv(ModelType.TURBO, "w@h", "INFO", off.task_events)
    assert "--task-events" in worker_argv(ModelType.TURBO, "w@h", "INFO")
    assert celery_config(Settings())["worker_send_task_events"] is True  # Flower's default
