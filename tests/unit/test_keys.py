"""Redis keys built in Lua match their builders in common/keys.py; the Lua loader's rules."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from common import scripts
from common.job import ModelType
from common.keys import BATCH_PARTS, Keys
from common.status import TERMINAL

ROOT = Path(__file__).resolve().parents[2]
LUA = ROOT / "common" / "lua"

# A Lua term after `..`: a string literal, or a name (`id`, `spec.model`, `table.remove(x)`).
_TERM = r"'[^']*'|[A-Za-z_][\w.]*(?:\([^()]*\))?"
_PREFIX_CHAIN = re.compile(rf"\bprefix((?:\s*\.\.\s*(?:{_TERM}))+)")
_CHAIN_TERM = re.compile(rf"\s*\.\.\s*({_TERM})")
# A literal that looks like a key segment (`':job:'`, `':webhooks:due'`), not a bare `':'`.
_SEGMENT = re.compile(r"'(:[a-z][\w-]*:?)'")
_BATCH_PART = re.compile(r"\bkey\s*\.\.\s*'(:[^']*)'")

TURBO = ModelType.TURBO.value

# The first literal a Lua script puts after the prefix -> the builder of that key and
# sample arguments, in the order the Lua concatenates them.
Builder = Callable[..., str]
BUILDERS: dict[str, tuple[Builder, list[str]]] = {
    ":job:": (Keys.job, ["job-1"]),
    ":children:": (Keys.children, ["job-1"]),
    ":running:": (lambda keys, model: keys.running(ModelType(model)), [TURBO]),
    ":unpublished:": (lambda keys, model: keys.unpublished(ModelType(model)), [TURBO]),
    ":jobbatches:": (Keys.job_batches, ["job-1"]),
    ":batch:": (Keys.batch, ["batch-1"]),
    ":webhook:": (Keys.webhook, ["campaign_run", "run-1"]),
    ":webhooks:due": (lambda keys: keys.webhooks_due, []),
    ":webhooks:wake": (lambda keys: keys.webhooks_wake, []),
    ":ended:": (Keys.ended, ["job-1"]),
    ":batch-progress:": (Keys.batch_progress, ["batch-1"]),
    ":worker:": (Keys.worker, ["turbo-1@host"]),
    ":idle:": (lambda keys, model: keys.idle(ModelType(model)), [TURBO]),
    ":passed:": (lambda keys, model: keys.passed(ModelType(model)), [TURBO]),
    ":warm:": (lambda keys, model, sha: keys.warm(ModelType(model), sha), [TURBO, "a" * 64]),
}


def lua_sources() -> dict[str, str]:
    """Every .lua file's own text (includes not expanded), by name."""
    return {path.stem: path.read_text() for path in sorted(LUA.glob("*.lua"))}


def prefix_chains() -> list[tuple[str, list[str | None]]]:
    """(script, terms) of each `prefix .. ...` expression: a literal's text, None for a value."""
    found = []
    for name, text in lua_sources().items():
        for chain in _PREFIX_CHAIN.finditer(text):
            terms: list[str | None] = []
            for term in _CHAIN_TERM.findall(chain[1]):
                terms.append(term[1:-1] if term.startswith("'") else None)
            found.append((name, terms))
    return found


def test_the_lua_builds_keys_from_the_prefix() -> None:
    kinds = {terms[0] for _, terms in prefix_chains()}
    assert {":job:", ":webhook:", ":batch:", ":ended:", ":running:"} <= kinds


@pytest.mark.parametrize(("script", "terms"),
                         [pytest.param(script, terms, id=f"{script}{terms[0]}")
                          for script, terms in prefix_chains()])
def test_each_key_built_in_lua_is_its_builders_key(script: str,
                                                   terms: list[str | None]) -> None:
    kind = terms[0]
    assert kind is not None and kind in BUILDERS, (
        f"{script}.lua builds a `prefix .. {kind!r}` key that common/keys.py does not build "
        "(add a builder there, and here)")
    builder, samples = BUILDERS[kind]
    values = iter(samples)
    lua_key = "zqt" + "".join(next(values) if term is None else term for term in terms)
    assert next(values, None) is None, f"{script}.lua's {kind} key takes other values"
    assert builder(Keys("zqt"), *samples) == lua_key


def test_no_lua_key_is_built_from_anything_but_the_prefix() -> None:
    """A key segment outside a `prefix ..` chain (`ARGV[6] .. ':running:'`) escapes the check."""
    chained = {terms[0] for _, terms in prefix_chains()}
    for name, text in lua_sources().items():
        stray = set(_SEGMENT.findall(text)) - chained - set(BATCH_PARTS)
        assert not stray, f"{name}.lua builds keys the tests cannot see: {sorted(stray)}"


def test_the_batch_keys_the_lua_derives_are_batch_parts() -> None:
    parts = set(_BATCH_PART.findall(lua_sources()["ending_lib"]))
    assert parts == {":pending", ":rows"}
    keys = Keys("zqt")
    for part in parts:
        assert part in BATCH_PARTS
        assert keys.batch("b", part) == keys.batch("b") + part


def test_a_prefix_is_kept_whole() -> None:
    keys = Keys("tenant:a")
    assert keys.job("j") == "tenant:a:job:j"
    assert keys.workers(ModelType.EDIT) == "tenant:a:workers:edit"
    assert keys.comfy_prompt("p") == "tenant:a:comfy:prompt:p"
    assert Keys().dead_letters == "zq:dead_letters"


# -- the loader -----------------------------------------------------------------


def test_every_script_loads_with_its_includes_and_constants_expanded() -> None:
    for name in scripts.names():
        text = scripts.load(name)
        assert "--#include" not in text, name
        assert not re.search(r"__[A-Z_]+__", text), name
        assert "{{" not in text and "}}" not in text, name  # Lua, not an f-string's escape
    assert scripts.load("finish").count("local function ended(id)") == 1
    assert "local terminal = {" in scripts.load("batch_add")


def test_each_script_starts_with_what_it_takes() -> None:
    shared = {"ending_lib", "terminal"}
    for name in set(scripts.names()) - shared:
        first = lua_sources()[name].splitlines()[0]
        assert first.startswith("-- KEYS"), name


def test_the_terminal_table_is_sorted_and_complete() -> None:
    table = scripts.CONSTANTS["__TERMINAL__"]
    names = re.findall(r"\['(\w+)'\]=true", table)
    assert names == sorted(s.value for s in TERMINAL)


def test_bad_names_and_cycles_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    with pytest.raises(ValueError, match="not a script name"):
        scripts.load("../keys")
    with pytest.raises(ValueError, match="no Lua script"):
        scripts.load("no_such_script")
    sources = {"a": "--#include b\n", "b": "--#include a\n", "c": "return __NOPE__\n"}
    monkeypatch.setattr(scripts, "_source", lambda name: sources[name])
    with pytest.raises(ValueError, match="include cycle: a -> b -> a"):
        scripts._expand("a", ())
    with pytest.raises(ValueError, match="unknown constant __NOPE__"):
        scripts.load.__wrapped__("c")


def test_script_text_is_the_same_in_every_process() -> None:
    """Redis keeps a script per SHA1: text that followed hash order would be loaded per process."""
    code = ("import hashlib; from common import scripts; "
            "print(hashlib.sha1(''.join(scripts.load(n) for n in scripts.names()).encode())"
            ".hexdigest())")
    here = hashlib.sha1("".join(scripts.load(n) for n in scripts.names()).encode()).hexdigest()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True, timeout=60).stdout.strip()
        assert out == here
