"""Prometheus metrics of ``zq api``: requests by route template, served at ``GET /metrics``.

Names follow Prometheus conventions (``zq_api_..._total``, base units). Labels are bounded:
``route`` is the matched route's template (``/v1/jobs/{job_id}``), never the raw path, and
``unmatched`` for a path no route matches; ``method`` is one of the standard methods or
``OTHER``; ``status`` is the HTTP status code.

- ``zq_api_requests_total{method,route,status}``: HTTP requests answered
- ``zq_api_request_duration_seconds{method,route}``: histogram, from the request to its
  response headers
- ``zq_api_requests_in_progress``: HTTP requests being served, open SSE streams included
- ``zq_api_websocket_connections``: WebSocket connections accepted and not yet closed
  (WebSockets are not in the request metrics)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from fastapi import FastAPI
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.routing import BaseRoute, Match, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The app returned without answering: the client went away first (nginx's code for it).
NO_RESPONSE = 499


class ApiMetrics:
    """The API's metrics, in a registry of their own (one per app, so apps never clash)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("zq_api_requests", "HTTP requests answered, by route template",
                                ["method", "route", "status"], registry=r)
        self.duration = Histogram("zq_api_request_duration_seconds",
                                  "Time from an HTTP request to its response headers",
                                  ["method", "route"], registry=r)
        self.in_progress = Gauge("zq_api_requests_in_progress",
                                 "HTTP requests being served (open SSE streams included)",
                                 registry=r)
        self.websockets = Gauge("zq_api_websocket_connections",
                                "WebSocket connections accepted and not yet closed", registry=r)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request and its time to headers."""
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


def route_template(scope: Scope, routes: Sequence[BaseRoute]) -> str:
    """The template of the route serving ``scope``, or ``unmatched``.

    Starlette's router and FastAPI's routes leave the matched route in ``scope["route"]``
    (not every version); otherwise the routes are matched again, as the router does: the
    first full match, else the first partial one (the path matches but not the method: a
    405).
    """
    route = scope.get("route")
    if getattr(route, "path_format", None) is None:
        _, route = _match(scope, routes)
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) and template else UNMATCHED


def _match(scope: Scope, routes: Sequence[BaseRoute]) -> tuple[Match, BaseRoute | None]:
    partial: BaseRoute | None = None
    for candidate in routes:
        if getattr(candidate, "path_format", None) is None:
            # A router included as one route (recent FastAPI): match among its own routes.
            # Its routes carry the APIRouter's prefix, not one given to include_router.
            inner = getattr(getattr(candidate, "original_router", None), "routes", None)
            match, found = _match(scope, inner) if inner else (Match.NONE, None)
        else:
            (match, _), found = candidate.matches(scope), candidate
        if match is Match.FULL:
            return match, found
        if match is Match.PARTIAL and partial is None:
            partial = found
    return (Match.NONE, None) if partial is None else (Match.PARTIAL, partial)


class MetricsMiddleware:
    """Pure ASGI middleware recording :class:`ApiMetrics` (nothing is buffered).

    HTTP requests are counted and timed when their response headers are sent: for an SSE
    stream that is the time to open the stream (its length is a job's, not the API's
    latency), and a stream that runs for minutes is counted as soon as it starts. The
    in-progress gauge holds each request until the app returns, so open streams show there.
    A request that raises before answering counts as 500, one the app leaves unanswered (a
    client gone) as 499. WebSockets only move ``zq_api_websocket_connections``, from their
    accept to their end; their messages pass through untouched.
    """

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, router: Router) -> None:
        self.app = app
        self.metrics = metrics
        self.router = router

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Time and count an HTTP request; track a WebSocket; pass anything else on."""
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"] if scope["method"] in METHODS else "OTHER"
        start = time.perf_counter()
        answered = False

        def record(status: int) -> None:
            nonlocal answered
            answered = True
            self.metrics.observe(method, route_template(scope, self.router.routes), status,
                                 time.perf_counter() - start)

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start" and not answered:
                record(int(message["status"]))
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, timed)
        except Exception:
            if not answered:
                record(500)
            raise
        finally:
            self.metrics.in_progress.dec()
            if not answered:  # returned (or was cancelled) without answering
                record(NO_RESPONSE)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = False

        async def tracked(message: Message) -> None:
            nonlocal accepted
            await send(message)
            if message["type"] == "websocket.accept" and not accepted:
                accepted = True
                self.metrics.websockets.inc()

        try:
            await self.app(scope, receive, tracked)
        finally:
            if accepted:
                self.metrics.websockets.dec()


def install_metrics(app: FastAPI) -> ApiMetrics:
    """Record request metrics on ``app`` (``app.state.metrics``) and serve ``GET /metrics``."""
    metrics = ApiMetrics()
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics, router=app.router)

    # No API key guard: the scraper (Prometheus) lives in the cluster and has no key, and
    # the metrics hold no job ids or prompts. The chart's NetworkPolicy decides who reaches
    # the API port; with networkPolicy.apiFrom set, only those peers and Prometheus do.
    async def prometheus_metrics() -> Response:
        """The API's metrics in the Prometheus text format."""
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/metrics", prometheus_metrics, methods=["GET"], include_in_schema=False)
    return metrics
