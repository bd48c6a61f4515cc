"""The local HTTP API of a running node, served inside the node's trio loop.

Starlette (ASGI) under Hypercorn's trio worker: Hypercorn is the ASGI server that runs natively
on trio, so the API shares the node's event loop and nursery with the libp2p host instead of a
second loop in a thread; Starlette gives routing and WebSocket support (the event stream of a
later issue) with little code.

Rules:
- Loopback only (the config refuses any other host) and every request carries
  ``Authorization: Bearer <token>`` with the token from ``<home>/api.token``; anything else is
  answered 401 with no detail about the node.
- Handlers only read the node through the ``status`` callable they are given: the API holds
  no state of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# trio's own TaskStatus type is hidden from mypy by the trio-stubs package that py-libp2p
# pulls in (trio-typing); its TaskStatus is the same protocol.
from trio_typing import TaskStatus

StatusProvider = Callable[[], Mapping[str, Any]]


class _BearerTokenMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self._expected = f"Bearer {token}".encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, self._expected):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return await call_next(request)


def build_api(status: StatusProvider, token: str) -> Starlette:
    async def get_status(request: Request) -> Response:
        return JSONResponse(dict(status()))

    return Starlette(
        routes=[Route("/v1/status", get_status, methods=["GET"])],
        middleware=[Middleware(_BearerTokenMiddleware, token=token)],
    )


async def serve_api(
    app: Starlette,
    bind: str,
    *,
    task_status: TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``bind`` (HOST:PORT) until cancelled; ``start`` returns the base URL."""
    config = HypercornConfig()
    config.bind = [bind]
    config.accesslog = None
    config.errorlog = None
    # On cancellation Hypercorn waits for open requests up to this long, then closes them.
    config.graceful_timeout = 1.0
    async with trio.open_nursery() as nursery:
        # Starlette is an ASGI app; hypercorn's annotation is a union that does not name it.
        asgi_app: Any = app
        binds: list[str] = await nursery.start(partial(serve, asgi_app, config, mode="asgi"))
        task_status.started(binds[0])
