"""Worker caches: the LRU, the latent shape rule, and seeded latent templates."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the worker extra (torch) is not installed")
pytest.importorskip("diffusers", reason="the worker extra (diffusers) is not installed")

from worker.caches import LRUCache, latent_shape, make_latent_template  # noqa: E402


class Maker:
    """Counts how often a value had to be made."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, key: str) -> str:
        self.calls.append(key)
        return f"value-{key}"


def _get(cache: LRUCache[str, str], maker: Maker, key: str) -> str:
    return cache.get_or_make(key, lambda: maker(key))


def test_lru_hits_and_misses() -> None:
    cache: LRUCache[str, str] = LRUCache(4)
    maker = Maker()
    assert _get(cache, maker, "a") == "value-a"
    assert _get(cache, maker, "a") == "value-a"
    assert _get(cache, maker, "b") == "value-b"
    assert _get(cache, maker, "a") == "value-a"
    assert maker.calls == ["a", "b"]
    assert (cache.hits, cache.misses) == (2, 2)
    assert len(cache) == 2


def test_lru_evicts_least_recently_used() -> None:
    cache: LRUCache[str, str] = LRUCache(2)
    maker = Maker()
    _get(cache, maker, "a")
    _get(cache, maker, "b")
    _get(cache, maker, "a")  # a is now the most recently used
    _get(cache, maker, "c")  # evicts b, not a
    assert len(cache) == 2
    maker.calls.clear()
    _get(cache, maker, "a")
    assert maker.calls == []  # a survived
    _get(cache, maker, "b")
    assert maker.calls == ["b"]  # b was evicted; remaking it evicts c (oldest)
    _get(cache, maker, "c")
    assert maker.calls == ["b", "c"]


def test_lru_capacity_one() -> None:
    cache: LRUCache[str, str] = LRUCache(1)
    maker = Maker()
    for key in ("a", "a", "b", "a"):
        _get(cache, maker, key)
    assert maker.calls == ["a", "b", "a"]
    assert len(cache) == 1


def test_lru_capacity_zero_stores_nothing() -> None:
    cache: LRUCache[str, str] = LRUCache(0)
    maker = Maker()
    for _ in range(3):
        assert _get(cache, maker, "a") == "value-a"
    assert maker.calls == ["a", "a", "a"]
    assert len(cache) == 0
    assert (cache.hits, cache.misses) == (0, 3)


def test_lru_failed_make_caches_nothing() -> None:
    cache: LRUCache[str, str] = LRUCache(2)

    def boom() -> str:
        raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError):
        cache.get_or_make("a", boom)
    assert len(cache) == 0
    assert cache.get_or_make("a", lambda: "ok") == "ok"


@pytest.mark.parametrize(
    ("height", "width", "expected"),
    [(64, 64, (1, 16, 8, 8)), (48, 80, (1, 16, 6, 10)), (1024, 1024, (1, 16, 128, 128))],
)
def test_latent_shape(height: int, width: int, expected: tuple[int, ...]) -> None:
    assert latent_shape(height, width, channels=16, vae_scale_factor=8) == expected


def test_latent_template_is_deterministic_per_seed() -> None:
    shape = latent_shape(48, 80, 16, 8)
    first = make_latent_template(shape, 1234)
    again = make_latent_template(shape, 1234)
    assert tuple(first.shape) == shape
    assert first.dtype == torch.float32
    assert first.device.type == "cpu"
    assert torch.equal(first, again)


def test_latent_template_differs_across_seeds() -> None:
    shape = latent_shape(64, 64, 16, 8)
    a = make_latent_template(shape, 1)
    b = make_latent_template(shape, 2)
    assert a.dtype == b.dtype == torch.float32
    assert not torch.allclose(a, b)


def test_latent_template_matches_a_fresh_cpu_generator() -> None:
    """The pipeline's own draw (a seeded CPU generator) gives the same noise."""
    shape = (1, 16, 8, 8)
    expected = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(99),
                           dtype=torch.float32)
    assert torch.equal(make_latent_template(shape, 99), expected)
