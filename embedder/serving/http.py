"""The HTTP port (aiohttp, on the gRPC server's event loop): the OpenAI-compatible embeddings
API under /v1 and the KServe v2 REST API under /v2, over the same engine.

Shared here: Bearer-token auth, the request size limit, TLS, and per-protocol request metrics.
Each protocol maps engine errors to its own status codes and error bodies (`ERRORS`).
"""

from __future__ import annotations

import hmac
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from embedder.core.errors import (
    DeadlineExceededError,
    EmbedderError,
    InputError,
    MessageTooLargeError,
    ModelNotFoundError,
    NotReadyError,
    QueueFullError,
    shorten,
)
from embedder.engine.engine import Engine
from embedder.serving.config import ServerConfig

log = logging.getLogger(__name__)

# Engine errors -> HTTP status, the same for every protocol on this port.
HTTP_STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InputError, 400),
    (ModelNotFoundError, 404),
    (MessageTooLargeError, 413),
    (QueueFullError, 429),
    (NotReadyError, 503),
    (DeadlineExceededError, 504),
)
MESSAGE_CHARS = 2000


def http_status(exc: Exception) -> int:
    for kind, status in HTTP_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


class HttpError(Exception):
    """An error of the HTTP request itself (auth, size, malformed body): status and message."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


# protocol -> function(status, message, exc) -> JSON body, registered by each protocol module
ErrorBody = Callable[[int, str, Exception], dict]


def protocol_of(path: str) -> str:
    return "openai" if path.startswith("/v1") else "kserve-v2"


class HttpDoor:
    """The aiohttp application and its listener; `start()` binds, `stop()` closes."""

    def __init__(self, engine: Engine, config: ServerConfig, error_bodies: dict[str, ErrorBody],
                 routes: list[web.RouteDef]):  # fmt: skip
        self.engine, self.config, self.error_bodies = engine, config, error_bodies
        self.app = web.Application(
            client_max_size=config.max_message_bytes, middlewares=[self._middleware]
        )
        self.app.add_routes(routes)
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        host, _, port = self.config.http_address.rpartition(":")
        if not port.isdigit():
            raise EmbedderError(f"--http-address {self.config.http_address!r}: give HOST:PORT, "
                                "e.g. 127.0.0.1:8080")  # fmt: skip
        self.runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host.strip("[]") or "127.0.0.1", int(port),
                           ssl_context=self._ssl_context(), reuse_port=False)  # fmt: skip
        try:
            await site.start()
        except OSError as exc:
            await self.runner.cleanup()
            raise EmbedderError(
                f"cannot listen on {self.config.http_address} for HTTP ({exc}); is another "
                "server using the port? pick another --http-address"
            ) from exc
        self.port = site._server.sockets[0].getsockname()[1]  # the bound port (0: any free)
        return self.port

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def _ssl_context(self) -> ssl.SSLContext | None:
        c = self.config
        if c.tls_cert is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(Path(c.tls_cert), Path(c.tls_key))
        return context

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        protocol = protocol_of(request.path)
        route = request.match_info.route.resource
        method = route.canonical if route is not None else "unmatched"  # bounded label values
        metrics = self.engine.metrics
        metrics.requests.labels(protocol, method).inc()
        try:
            self._check_auth(request)
            return await handler(request)
        except web.HTTPException as exc:  # aiohttp's own: 404 route, 405, 413 body size
            status, message = exc.status, exc.reason
            if status == 413:
                message = (f"the request is over the server's limit of "
                           f"{self.config.max_message_bytes} bytes; split it")  # fmt: skip
            failure: Exception = exc
        except HttpError as exc:
            status, message, failure = exc.status, exc.message, exc
        except Exception as exc:
            status, message, failure = http_status(exc), str(exc), exc
            if status == 500:
                log.exception("%s %s failed", request.method, request.path, exc_info=exc)
                message = "internal error; the server's log has the details"
        metrics.errors.labels(protocol, method, str(status)).inc()
        body = self.error_bodies[protocol](status, shorten(message, MESSAGE_CHARS), failure)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return web.json_response(body, status=status, headers=headers)

    def _check_auth(self, request: web.Request) -> None:
        token = self.config.auth_token
        if not token or request.path.startswith("/v2/health/"):  # probes, as on the gRPC port
            return
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HttpError(401, "missing or wrong bearer token: send 'Authorization: Bearer "
                                 "<token>' (the OpenAI SDK's api_key)")  # fmt: skip


async def json_body(request: web.Request) -> dict:
    """The request's JSON object, or a 400 that says what is wrong with it."""
    try:
        body = await request.json()
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"the body is not JSON: {exc!r}") from exc
    if not isinstance(body, dict):
        raise HttpError(400, f"the body is a JSON {type(body).__name__}, not an object")
    return body
