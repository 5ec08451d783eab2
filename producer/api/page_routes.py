"""The conversation page: three static files served as they are (no build step to run it).

The files are public, like any login page; everything they show comes from the ``/v1``
routes, which ask for the API key the page holds in the browser's storage.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import Response

from producer.api.problems import ApiProblem

ASSETS = {"page.js": "text/javascript", "page.css": "text/css"}
# The page needs nothing but its own origin: no inline script, no third-party anything.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
                               "img-src 'self' blob: data:; connect-src 'self'; "
                               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

router = APIRouter(include_in_schema=False)


@cache
def _read(name: str) -> bytes:
    return files("producer.api").joinpath("page", name).read_bytes()


@router.get("/")
@router.get("/ui")
@router.get("/ui/")
def page() -> Response:
    """The conversation page."""
    return Response(_read("index.html"), media_type="text/html; charset=utf-8",
                    headers=SECURITY_HEADERS)


@router.get("/ui/{name}")
def asset(name: str) -> Response:
    """The page's script and style sheet."""
    if name not in ASSETS:
        raise ApiProblem(404, f"no page asset named {name!r}")
    return Response(_read(name), media_type=f"{ASSETS[name]}; charset=utf-8",
                    headers=SECURITY_HEADERS)
