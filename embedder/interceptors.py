"""Server interceptors: domain errors -> status codes (with metrics), and bearer-token auth."""

from __future__ import annotations

import hmac
import logging

import grpc

from .errors import (
    DeadlineExceededError,
    InputError,
    ModelNotFoundError,
    NotReadyError,
    QueueFullError,
)
from .metrics import Metrics

log = logging.getLogger(__name__)

_STATUS = (
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
)

OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _rewrap(handler: grpc.RpcMethodHandler, unary, stream) -> grpc.RpcMethodHandler:
    kwargs = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kwargs)
    return handler


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """One place where exceptions become status codes; counts requests and errors."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def _fail(self, method: str, exc: Exception, context) -> None:
        code = status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("%s failed", method, exc_info=exc)
        self.metrics.errors.labels(method, code.name).inc()
        await context.abort(
            code, str(exc) if code is not grpc.StatusCode.INTERNAL else f"internal error: {exc!r}"
        )

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        method = details.method.rsplit("/", 1)[-1]

        def unary(behaviour):
            async def wrapped(request, context):
                self.metrics.requests.labels(method).inc()
                try:
                    return await behaviour(request, context)
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await self._fail(method, exc, context)

            return wrapped

        def stream(behaviour):
            async def wrapped(requests, context):
                self.metrics.requests.labels(method).inc()
                try:
                    async for response in behaviour(requests, context):
                        yield response
                except Exception as exc:
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    await self._fail(method, exc, context)

            return wrapped

        return _rewrap(handler, unary, stream)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>`; health and reflection stay open for probes."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(given.encode(), self._expected):
            return handler

        async def deny_unary(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        async def deny_stream(requests, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            yield  # pragma: no cover  (makes this an async generator)

        return _rewrap(handler, lambda _: deny_unary, lambda _: deny_stream)
