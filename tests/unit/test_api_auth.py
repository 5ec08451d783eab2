"""API keys, the loopback rule and the rate limiter of ``zq api`` (no services)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import ConfigError
from producer.api.auth import ApiKeys, RateLimiter, digest, is_loopback


def test_keys_from_file_and_env_are_kept_hashed(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f"# ops team\nplain-key\n\nsha256:{digest('hashed-key').upper()}\n")
    keys = ApiKeys.from_env({"ZQ_API_KEYS_FILE": str(path), "ZQ_API_KEYS": "env-key, ,"})
    assert keys.enabled and len(keys.digests) == 3
    assert "plain-key" not in keys.digests
    for token in ("plain-key", "hashed-key", "env-key"):
        assert keys.identify(token) == digest(token)
    assert keys.identify("wrong") is None
    assert keys.identify("") is None


def test_no_keys_means_auth_off() -> None:
    assert not ApiKeys.from_env({}).enabled
    assert not ApiKeys.from_env({"ZQ_API_KEYS": " , "}).enabled


@pytest.mark.parametrize("content", [None, "# only a comment\n\n"])
def test_unreadable_or_empty_keys_file_is_a_config_error(tmp_path: Path,
                                                        content: str | None) -> None:
    path = tmp_path / "keys"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="ZQ_API_KEYS_FILE"):
        ApiKeys.from_env({"ZQ_API_KEYS_FILE": str(path)})


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("127.3.2.1", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
    ("example.com", False)])
def test_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_rate_limiter_allows_a_burst_then_says_how_long_to_wait() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=3)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait_s = limiter.take("a")
    assert 0.0 < wait_s <= 1.0
    assert limiter.take("b") == 0.0  # callers are counted apart
