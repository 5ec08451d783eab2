"""The Lua scripts zimage-queue runs in Redis, one file each in ``common/lua/``, by name.

``load("finish")`` is the text of ``common/lua/finish.lua`` with two expansions:

* a line ``--#include NAME`` is replaced by the (expanded) text of ``NAME.lua``, so the
  scripts that end a job share ``ending_lib.lua`` and those that need the terminal
  statuses share ``terminal.lua``;
* a constant written ``__NAME__`` is replaced by its Lua value (``CONSTANTS``), built from
  the Python side so the two cannot drift apart.

Redis keys a script by the SHA1 of its text, so the text must be the same in every
process: nothing here depends on hash order (the terminal statuses are sorted), and a
script is read once per process (``load`` is cached).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from common.status import TERMINAL

_INCLUDE = re.compile(r"^--#include (\w+)$", re.MULTILINE)
_CONSTANT = re.compile(r"__[A-Z_]+__")
_NAME = re.compile(r"\w+")

# Sorted: a set's order follows PYTHONHASHSEED, and a script whose text differed per
# process would be loaded (and kept) by Redis once per process.
CONSTANTS = {
    "__TERMINAL__": "{" + ", ".join(f"['{name}']=true"
                                    for name in sorted(s.value for s in TERMINAL)) + "}",
}
"""Python-side values the scripts name: the Lua set of terminal job statuses."""


def _source(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a script name: {name!r}")
    path = resources.files("common").joinpath("lua", f"{name}.lua")
    if not path.is_file():
        raise ValueError(f"no Lua script {name!r} in common/lua/")
    return path.read_text(encoding="utf-8")


def _expand(name: str, including: tuple[str, ...]) -> str:
    if name in including:
        raise ValueError(f"Lua include cycle: {' -> '.join((*including, name))}")
    return _INCLUDE.sub(lambda found: _expand(found[1], (*including, name)).rstrip("\n"),
                        _source(name))


@cache
def load(name: str) -> str:
    """The text of script ``name`` (``common/lua/{name}.lua``), includes and constants expanded.

    ``ValueError`` for an unknown script, an include cycle or an unknown constant.
    """
    return _CONSTANT.sub(lambda found: _constant(found[0], name), _expand(name, ()))


def _constant(token: str, name: str) -> str:
    try:
        return CONSTANTS[token]
    except KeyError:
        raise ValueError(f"unknown constant {token} in Lua script {name!r}") from None


def names() -> list[str]:
    """Every script in ``common/lua/`` (shared parts such as ``ending_lib`` included), sorted."""
    folder = resources.files("common").joinpath("lua")
    return sorted(entry.name.removesuffix(".lua") for entry in folder.iterdir()
                  if entry.name.endswith(".lua"))
