"""A request body limit, enforced while the body arrives (not after it is buffered)."""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from producer.api.problems import BodyTooLarge, problem


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit_for(path)`` bytes.

    A declared Content-Length over the limit is refused before anything is read; an
    undeclared (chunked) body is counted and cut off at the limit.
    """

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on with a counting ``receive``."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        refusal = problem(413, f"request body over {limit} bytes", field="body",
                          limit=f"at most {limit} bytes")
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await refusal(scope, receive, send)
            return
        seen, over, answered = 0, False, False

        async def counted() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise BodyTooLarge(limit)
            return message

        async def guarded(message: Message) -> None:
            nonlocal answered
            # Whatever the app made of the cut-off body (a parse error), the answer is 413.
            if not over:
                await send(message)
            elif not answered and message["type"] == "http.response.start":
                answered = True
                await refusal(scope, receive, send)

        await self.app(scope, counted, guarded)
