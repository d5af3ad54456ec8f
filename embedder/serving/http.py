"""The HTTP port (aiohttp, on the gRPC server's event loop): the OpenAI-compatible embeddings
API under /v1 and the KServe v2 REST API under /v2, over the same engine.

Shared here: Bearer-token auth, the request size limit and read timeouts, TLS, and per-protocol
request metrics. Each protocol shapes its own error bodies (`ErrorBody`) from one status mapping.
Every error answer is built inside the `except` that caught it, and nothing keeps the exception:
a refused 50 MB body is freed when its answer leaves, not at the next garbage collection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

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
from embedder.serving.auth import bearer_token_ok
from embedder.serving.config import ServerConfig
from embedder.serving.http_guard import GuardedRequestHandler

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
READ_SECONDS = web.AppKey("read_seconds", float)  # a body must arrive within this
KEEPALIVE_SECONDS = 75.0  # an idle kept-alive connection is closed after this (nginx's default)
CLOSE_SECONDS = 0.1  # at stop, after the drain window: what still runs gets this long
CLIENT_CLOSED = "499"  # the code counted when the client disconnects mid-request (nginx's)


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


def error_status(exc: Exception, max_message_bytes: int) -> tuple[int, str]:
    """The HTTP status and message of an error raised while handling a request."""
    if isinstance(exc, HttpError):
        return exc.status, exc.message
    if isinstance(exc, web.HTTPException):  # aiohttp's: 404 route, 405 method, 413 body size
        if exc.status == 413:
            return 413, (f"the request is over the server's limit of {max_message_bytes} "
                         "bytes; split it")  # fmt: skip
        if exc.status == 404:
            return 404, "no such route: the server serves /v1/embeddings, /v1/models and /v2"
        return exc.status, exc.reason
    if isinstance(exc, web.RequestPayloadError):  # a body aiohttp cannot read (its encoding)
        cause = exc.__cause__
        reason = cause.message if isinstance(cause, HttpProcessingError) else str(exc)
        return 400, f"the body cannot be read: {reason.strip()}"
    status = http_status(exc)
    if status == 500:
        return 500, "internal error; the server's log has the details"
    return status, str(exc)


class HttpDoor:
    """The aiohttp application and its listener; `start()` binds, `stop()` closes."""

    def __init__(self, engine: Engine, config: ServerConfig, error_bodies: dict[str, ErrorBody],
                 routes: list[web.RouteDef]):  # fmt: skip
        self.engine, self.config, self.error_bodies = engine, config, error_bodies
        self.app = web.Application(
            client_max_size=config.max_message_bytes, middlewares=[self._middleware]
        )
        self.app[READ_SECONDS] = config.read_timeout_seconds
        self.app.add_routes(routes)
        # At stop, the drain window is over: what still runs is cancelled, as on gRPC.
        self.runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=CLOSE_SECONDS)
        self.listener: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        c = self.config
        host, _, port = c.http_address.rpartition(":")
        if not port.isdigit():
            raise EmbedderError(f"--http-address {c.http_address!r}: give HOST:PORT, "
                                "e.g. 127.0.0.1:8080")  # fmt: skip
        await self.runner.setup()
        loop = asyncio.get_running_loop()
        connections = self.runner.server

        def connection() -> GuardedRequestHandler:
            return GuardedRequestHandler(
                connections, loop=loop, access_log=None, keepalive_timeout=KEEPALIVE_SECONDS,
                lingering_time=c.read_timeout_seconds,  # an unread body after its answer
                header_seconds=c.read_timeout_seconds, error_answer=self._parse_error,
                on_late_headers=self._count_late_headers,
            )  # fmt: skip

        tls = self._ssl_context()
        try:
            self.listener = await loop.create_server(
                connection, host.strip("[]") or "127.0.0.1", int(port), reuse_address=True,
                reuse_port=c.reuse_port,
                ssl=tls, ssl_handshake_timeout=c.read_timeout_seconds if tls else None,
            )  # fmt: skip
        except OSError as exc:
            await self.runner.cleanup()
            raise EmbedderError(
                f"cannot listen on {c.http_address} for HTTP ({exc}); is another server using "
                "the port? pick another --http-address"
            ) from exc
        self.port = self.listener.sockets[0].getsockname()[1]  # the bound port (0: any free)
        return self.port

    async def stop(self) -> None:
        if self.listener is not None:
            self.listener.close()
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
        self.engine.metrics.count_request(protocol, method)
        try:
            self._check_auth(request)
            return await handler(request)
        except ConnectionError:  # the client went away mid-request: nobody to answer
            self.engine.metrics.errors.labels(protocol, method, CLIENT_CLOSED).inc()
            log.debug("%s %s: the client closed the connection", request.method, request.path)
            return web.Response(status=int(CLIENT_CLOSED))
        except Exception as exc:  # the answer is built here, so no frame keeps `exc` alive
            return self._error_answer(request, protocol, method, exc)

    def _error_answer(self, request: web.Request, protocol: str, method: str,
                      exc: Exception) -> web.Response:  # fmt: skip
        status, message = error_status(exc, self.config.max_message_bytes)
        if status >= 500:
            log.error("%s %s failed", request.method, request.path, exc_info=exc)
        self.engine.metrics.errors.labels(protocol, method, str(status)).inc()
        body = self.error_bodies[protocol](status, shorten(message, MESSAGE_CHARS), exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        answer = web.json_response(body, status=status, headers=headers)
        if status == 408 or isinstance(exc, web.RequestPayloadError):
            request.protocol.close_after_answer()  # the rest of the body is no next request
        return answer

    def _parse_error(self, path: str, status: int, message: str) -> web.Response:
        """The answer to a request aiohttp could not parse (GuardedRequestHandler)."""
        protocol = protocol_of(path)
        self.engine.metrics.errors.labels(protocol, "unmatched", str(status)).inc()
        body = self.error_bodies[protocol](status, shorten(message, MESSAGE_CHARS),
                                           HttpError(status, message))  # fmt: skip
        return web.json_response(body, status=status)

    def _count_late_headers(self) -> None:
        self.engine.metrics.errors.labels("http", "unmatched", "408").inc()

    def _check_auth(self, request: web.Request) -> None:
        if not bearer_token_ok(self.config.auth_token, request.path,
                               request.headers.get("Authorization", "")):  # fmt: skip
            raise HttpError(401, "missing or wrong bearer token: send 'Authorization: Bearer "
                                 "<token>' (the OpenAI SDK's api_key)")  # fmt: skip


async def read_body(request: web.Request) -> bytes:
    """The request's body, which must arrive within the server's read timeout."""
    seconds = request.app[READ_SECONDS]
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError:
        raise HttpError(408, f"the body did not arrive within {seconds:g} s") from None


def json_object(raw: bytes, charset: str | None, what: str) -> dict:
    """`raw` as a JSON object in the request's charset (UTF-8 when none is named), or a 400
    that says what is wrong with it; `what` names it in the message."""
    charset = charset or "utf-8"
    try:
        value = json.loads(raw.decode(charset))
    except LookupError:  # not a codec, or not a text encoding ("hex", "zlib")
        raise HttpError(400, f"charset={charset!r} is not a text encoding; send UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"{what} is not JSON in {charset}: {exc!r}") from exc
    if not isinstance(value, dict):
        raise HttpError(400, f"{what} is a JSON {type(value).__name__}, not an object")
    return value


async def json_body(request: web.Request) -> dict:
    """The request's body as a JSON object, or a 400 that says what is wrong with it."""
    return json_object(await read_body(request), request.charset, "the body")
