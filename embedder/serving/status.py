"""Domain errors -> gRPC status codes, applied to each servicer method (with request metrics).

A decorator rather than a server interceptor: an interceptor runs a lookup chain and builds new
method handlers on every call, which is measurable per request on a small machine.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc
from google.protobuf.message import DecodeError

from embedder.core.errors import (
    DeadlineExceededError,
    InputError,
    MessageTooLargeError,
    ModelNotFoundError,
    NotReadyError,
    QueueFullError,
    shorten,
)

log = logging.getLogger(__name__)
MESSAGE_CHARS = 2000  # a status message beyond this is cut: gRPC sends it in the metadata

_STATUS = (
    (InputError, grpc.StatusCode.INVALID_ARGUMENT),
    (DecodeError, grpc.StatusCode.INVALID_ARGUMENT),  # a stream message that does not parse
    (ModelNotFoundError, grpc.StatusCode.NOT_FOUND),
    (QueueFullError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (MessageTooLargeError, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (DeadlineExceededError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (NotReadyError, grpc.StatusCode.UNAVAILABLE),
)


def status_for(exc: BaseException) -> grpc.StatusCode:
    for kind, code in _STATUS:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


async def _abort(servicer, method: str, exc: Exception, context) -> None:
    if isinstance(exc, grpc.aio.AbortError):  # the method aborted on purpose
        raise exc
    code = status_for(exc)
    if code is grpc.StatusCode.INTERNAL:
        log.exception("%s failed", method, exc_info=exc)
    elif isinstance(exc, DecodeError):
        log.warning("%s: a malformed message: %s", method, exc)
    servicer.metrics.errors.labels(method, code.name).inc()
    message = str(exc) if code is not grpc.StatusCode.INTERNAL else f"internal error: {exc!r}"
    if isinstance(exc, DecodeError):
        message = f"malformed message, not an {method} request: {exc}"
    await context.abort(code, shorten(message, MESSAGE_CHARS))


def _count_cancelled(servicer, method: str, context) -> None:
    """grpc cancels the handler when the client goes away or its deadline passes."""
    remaining = context.time_remaining()
    code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    servicer.metrics.errors.labels(method, code).inc()


def unary_rpc(method):
    """Counts the call; an exception ends it with its status code and a message."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapped(self, request, context):
        self.metrics.requests.labels(name).inc()
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            _count_cancelled(self, name, context)
            raise
        except Exception as exc:
            await _abort(self, name, exc, context)

    return wrapped


def stream_rpc(method):
    """`unary_rpc` for a response-streaming method."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapped(self, requests, context):
        self.metrics.requests.labels(name).inc()
        try:
            async for response in method(self, requests, context):
                yield response
        except asyncio.CancelledError:
            _count_cancelled(self, name, context)
            raise
        except Exception as exc:
            await _abort(self, name, exc, context)

    return wrapped
