"""API keys (bearer tokens, kept only as SHA-256 digests) and a per-key rate limit."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ConfigError

KEYS_FILE_ENV, KEYS_ENV = "ZQ_API_KEYS_FILE", "ZQ_API_KEYS"
_HASHED = re.compile(r"sha256:([0-9a-fA-F]{64})")


def digest(token: str) -> str:
    """The hex SHA-256 of a token: what is kept and compared, never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys, as digests; empty means authentication is off."""

    digests: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        """Whether requests must carry a bearer token."""
        return bool(self.digests)

    @classmethod
    def from_lines(cls, lines: list[str]) -> ApiKeys:
        """Keys from lines: a raw key, or ``sha256:<hex>``; blanks and ``#`` comments skipped."""
        digests = []
        for line in lines:
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            hashed = _HASHED.fullmatch(text)
            digests.append(hashed[1].lower() if hashed else digest(text))
        return cls(tuple(digests))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ApiKeys:
        """Keys from ``ZQ_API_KEYS_FILE`` (one a line) and ``ZQ_API_KEYS`` (comma-separated)."""
        env = os.environ if env is None else env
        lines = [part for part in env.get(KEYS_ENV, "").split(",")]
        path = env.get(KEYS_FILE_ENV, "").strip()
        if path:
            try:
                lines += Path(path).read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{KEYS_FILE_ENV}: cannot read {path!r}: {exc}") from None
            if not cls.from_lines(lines).enabled:
                raise ConfigError(f"{KEYS_FILE_ENV}: {path!r} holds no keys")
        return cls.from_lines(lines)

    def identify(self, token: str) -> str | None:
        """The digest of ``token`` if it is a known key; every stored digest is compared."""
        given = digest(token)
        found = None
        for known in self.digests:
            if hmac.compare_digest(given, known):
                found = known
        return found


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the API on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    """A token bucket per caller, in this process's memory: each replica counts alone."""

    rate_per_s: float
    burst: int
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, caller: str) -> float:
        """Spend one token; 0.0 if allowed, else the seconds until one is due."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(caller, _Bucket(float(self.burst), now))
            bucket.tokens = min(float(self.burst),
                                bucket.tokens + (now - bucket.at) * self.rate_per_s)
            bucket.at = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            if len(self._buckets) > 100_000:  # forget idle callers rather than grow forever
                self._buckets = {caller: bucket}
            return (1.0 - bucket.tokens) / self.rate_per_s
