"""The API's app factory: routes, auth, rate limit, body limit, problem+json errors."""

from __future__ import annotations

from fastapi import Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from common.settings import Settings
from producer.api import comfy_routes, comfy_ws, page_routes
from producer.api.auth import ApiKeys, RateLimiter
from producer.api.limits import BodyLimit
from producer.api.metrics import install_metrics
from producer.api.problems import ApiProblem, install_handlers
from producer.api.routes import router
from producer.client import Client

JSON_LIMIT = 1024 * 1024
UPLOAD_SLACK = 1024 * 1024  # multipart boundaries and form fields around the image
_bearer = HTTPBearer(auto_error=False, description="an API key (ZQ_API_KEYS_FILE)")


async def guard(request: Request,
                credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),  # noqa: B008
                ) -> None:
    """401 without a known key (when keys are configured); 429 past the caller's rate."""
    keys: ApiKeys = request.app.state.keys
    caller = f"ip:{request.client.host if request.client else '-'}"
    if keys.enabled:
        known = keys.identify(credentials.credentials) if credentials else None
        if known is None:
            raise ApiProblem(401, "a known API key is required: Authorization: Bearer <key>",
                             {"WWW-Authenticate": 'Bearer realm="zq"'})
        caller = f"key:{known}"
    limiter: RateLimiter = request.app.state.limiter
    wait_s = limiter.take(caller)
    if wait_s:
        raise ApiProblem(429, "rate limit exceeded; retry after the delay given",
                         {"Retry-After": str(max(1, round(wait_s + 0.5)))},
                         limit=f"{limiter.rate_per_s:g} requests per second, burst "
                               f"{limiter.burst}")


def create_app(settings: Settings, client: Client | None = None,
               keys: ApiKeys | None = None) -> FastAPI:
    """The app; ``keys`` default to ``ZQ_API_KEYS_FILE``/``ZQ_API_KEYS`` (none: no auth)."""
    app = FastAPI(title="zimage-queue", version="1",
                  summary="Submit and follow Z-Image jobs")
    app.state.settings = settings
    app.state.client = client or Client(settings)
    app.state.keys = ApiKeys.from_env() if keys is None else keys
    app.state.limiter = RateLimiter(float(settings.api_rate_per_s), settings.api_rate_burst)
    app.include_router(router, dependencies=[Depends(guard)])
    app.include_router(comfy_routes.router, dependencies=[Depends(guard)])
    app.include_router(comfy_ws.router)  # checks keys itself: guard reads a Request
    app.include_router(page_routes.router)  # public files; what they show needs a key
    upload_limit = settings.max_input_bytes + UPLOAD_SLACK
    app.add_middleware(BodyLimit, limit_for=lambda path: (
        upload_limit if path.rstrip("/") in ("/v1/uploads", *comfy_routes.UPLOAD_PATHS)
        else JSON_LIMIT))
    install_metrics(app)  # outermost: sees BodyLimit's 413s; GET /metrics
    install_handlers(app)
    return app
