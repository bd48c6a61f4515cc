"""The local HTTP API of a running node, served inside the node's trio loop.

Starlette (ASGI) under Hypercorn's trio worker: Hypercorn is the ASGI server that runs natively
on trio, so the API shares the node's event loop and nursery with the libp2p host instead of a
second loop in a thread; Starlette gives routing and streaming responses with little code.

Rules:
- Loopback only (the config refuses any other host) and every request carries
  ``Authorization: Bearer <token>`` with the token from ``<home>/api.token``; anything else is
  answered 401 with no detail about the node.
- Handlers hold no state: they parse the request, call the ``ApiBackend`` (the node) and
  shape its answer. Bodies are bounded (``MAX_PUBLISH_BODY_BYTES``).

Endpoints:
- ``GET /v1/status``: ``{"peer_id", "addrs", "peers", "uptime_s", "swarm", ...counters}``
- ``POST /v1/publish?tlp=LEVEL&format=jsonl|csv|stix|lines[&provider=NAME]``: the body is a
  file in that format; answers ``{"accepted": N, "rejected": [{"line", "reason"}]}``.
- ``GET /v1/stream?tlp=LEVEL[&tlp=LEVEL...]``: the live stream as JSON lines (one indicator
  record per line, with ``origin``), until the client hangs up.
- ``POST /v1/vouch``: body ``{"peer_id": ID, "level": "green", "lifetime_ms": N?}`` signs and
  announces a vouch, or ``{"peer_id": ID, "revoke": true}`` a revocation; answers the statement.
- ``GET /v1/events``: membership events as JSON lines (``{"event": "joined"|"left"|
  "addresses_changed"|"supernode_elected"|"supernode_dropped"|"dropped", "peer_id", ...}``),
  until the client hangs up.
- ``GET /v1/supernodes``: ``{"supernodes": [peer ids], "elected": [peer ids], "candidates":
  [{"peer_id", "score", "eligible", "reasons"}]}``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from functools import partial
from typing import Any, Protocol

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# trio's own TaskStatus type is hidden from mypy by the trio-stubs package that py-libp2p
# pulls in (trio-typing); its TaskStatus is the same protocol.
from trio_typing import TaskStatus

MAX_PUBLISH_BODY_BYTES = 64 * 1024 * 1024
MAX_JSON_BODY_BYTES = 64 * 1024


class ApiBackend(Protocol):
    """What the API needs from the node."""

    def status(self) -> Mapping[str, Any]: ...

    async def publish_text(
        self, text: str, *, fmt: str, tlp_name: str, provider: str
    ) -> Mapping[str, Any]: ...

    def stream_records(self, tlp_names: Sequence[str]) -> AsyncIterator[Mapping[str, Any]]: ...

    def event_records(self) -> AsyncIterator[Mapping[str, Any]]: ...

    def supernodes_report(self) -> Mapping[str, Any]: ...

    async def vouch_request(self, body: Mapping[str, Any]) -> Mapping[str, Any]: ...


class BadRequest(Exception):
    """The request is malformed; answered 400 with this message."""


class ServiceUnavailable(Exception):
    """The node could not do what was asked (e.g. publishing failed); answered 503."""


class _BearerTokenMiddleware(BaseHTTPMiddleware):
    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self._expected = f"Bearer {token}".encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not secrets.compare_digest(given, self._expected):
            return JSONResponse({"error": "missing or wrong bearer token"}, status_code=401)
        return await call_next(request)


def build_api(backend: ApiBackend, token: str) -> Starlette:
    async def get_status(request: Request) -> Response:
        return JSONResponse(dict(backend.status()))

    async def post_publish(request: Request) -> Response:
        params = request.query_params
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_PUBLISH_BODY_BYTES:
                return JSONResponse(
                    {"error": f"body larger than {MAX_PUBLISH_BODY_BYTES} bytes"}, status_code=413
                )
        try:
            text = body.decode("utf-8")
            result = await backend.publish_text(
                text,
                fmt=params.get("format", "jsonl"),
                tlp_name=params.get("tlp", "clear"),
                provider=params.get("provider", ""),
            )
        except UnicodeDecodeError:
            return JSONResponse({"error": "the body is not UTF-8 text"}, status_code=400)
        except BadRequest as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except ServiceUnavailable as error:
            return JSONResponse({"error": str(error)}, status_code=503)
        return JSONResponse(dict(result))

    async def post_vouch(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_JSON_BODY_BYTES:
            return JSONResponse({"error": "body too large"}, status_code=413)
        try:
            document = json.loads(body)
            if not isinstance(document, dict):
                raise BadRequest("expected a JSON object")
            result = await backend.vouch_request(document)
        except ValueError:
            return JSONResponse({"error": "the body is not a JSON object"}, status_code=400)
        except BadRequest as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        return JSONResponse(dict(result))

    async def get_stream(request: Request) -> Response:
        tlp_names = request.query_params.getlist("tlp")
        try:
            records = backend.stream_records(tlp_names)
        except BadRequest as error:
            return JSONResponse({"error": str(error)}, status_code=400)

        return StreamingResponse(_ndjson(records), media_type="application/x-ndjson")

    async def get_supernodes(request: Request) -> Response:
        return JSONResponse(dict(backend.supernodes_report()))

    async def get_events(request: Request) -> Response:
        return StreamingResponse(
            _ndjson(backend.event_records()), media_type="application/x-ndjson"
        )

    return Starlette(
        routes=[
            Route("/v1/status", get_status, methods=["GET"]),
            Route("/v1/publish", post_publish, methods=["POST"]),
            Route("/v1/stream", get_stream, methods=["GET"]),
            Route("/v1/events", get_events, methods=["GET"]),
            Route("/v1/supernodes", get_supernodes, methods=["GET"]),
            Route("/v1/vouch", post_vouch, methods=["POST"]),
        ],
        middleware=[Middleware(_BearerTokenMiddleware, token=token)],
    )


async def _ndjson(records: AsyncIterator[Mapping[str, Any]]) -> AsyncIterator[bytes]:
    async for record in records:
        yield json.dumps(record, sort_keys=True).encode() + b"\n"


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
