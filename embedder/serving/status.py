"""Domain errors -> gRPC status codes, applied to each servicer method (with request metrics,
labelled by the servicer's `protocol`).

A bad item (`InputError` with an index) also travels as a google.rpc.BadRequest field
violation (`items[3].image`) in the status details, so clients find it without parsing text.

A decorator rather than a server interceptor: an interceptor runs a lookup chain and builds new
method handlers on every call, which is measurable per request on a small machine.

`add_service` registers a servicer so that a unary request whose bytes are not a valid message
reaches its method as `Malformed` and is answered INVALID_ARGUMENT (grpc's own deserialisation
failure answers UNKNOWN); a stream's bad message raises DecodeError inside the method.
"""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc
from google.protobuf import message_factory
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
        log.debug("%s: a malformed message: %s", method, exc)  # counted in the metrics
    servicer.metrics.errors.labels(servicer.protocol, method, code.name).inc()
    message = str(exc) if code is not grpc.StatusCode.INTERNAL else f"internal error: {exc!r}"
    if isinstance(exc, DecodeError):
        message = f"malformed message, not an {method} request: {exc}"
    message = shorten(message, MESSAGE_CHARS)
    await context.abort(code, message, trailing_metadata=_details(code, message, exc))


def _details(code: grpc.StatusCode, message: str, exc: Exception) -> tuple:
    """google.rpc.Status details of a bad item, as trailing metadata (grpcio-status)."""
    if not isinstance(exc, InputError) or exc.index is None:
        return ()
    from google.rpc import error_details_pb2, status_pb2
    from grpc_status import rpc_status

    field = f"items[{exc.index}].{exc.field}" if exc.field else f"items[{exc.index}]"
    violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=exc.reason)
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
    return rpc_status.to_status(status).trailing_metadata


def _count_cancelled(servicer, method: str, context) -> None:
    """grpc cancels the handler when the client goes away or its deadline passes."""
    remaining = context.time_remaining()
    code = "DEADLINE_EXCEEDED" if remaining is not None and remaining <= 0 else "CANCELLED"
    servicer.metrics.errors.labels(servicer.protocol, method, code).inc()


class Malformed:
    """A unary request whose bytes did not parse; `unary_rpc` answers it INVALID_ARGUMENT."""

    __slots__ = ("error",)

    def __init__(self, error: DecodeError):
        self.error = error


def _lenient(parse):
    def deserialize(data: bytes):
        try:
            return parse(data)
        except DecodeError as exc:
            return Malformed(exc)

    return deserialize


def add_service(server: grpc.aio.Server, service, servicer) -> None:
    """Register `servicer`'s methods, named as in `service` (a protobuf ServiceDescriptor)."""
    handlers = {}
    for method in service.methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type).SerializeToString
        behaviour = getattr(servicer, method.name)
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(behaviour, request.FromString, response)
        elif not (method.client_streaming or method.server_streaming):
            handler = grpc.unary_unary_rpc_method_handler(behaviour, _lenient(request.FromString),
                                                          response)  # fmt: skip
        else:
            raise TypeError(f"{method.full_name}: only unary and bidirectional methods are served")
        handlers[method.name] = handler
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)


def unary_rpc(method):
    """Counts the call; an exception ends it with its status code and a message."""
    name = method.__name__

    @functools.wraps(method)
    async def wrapped(self, request, context):
        self.metrics.count_request(self.protocol, name)
        try:
            if type(request) is Malformed:
                raise request.error
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
        self.metrics.count_request(self.protocol, name)
        try:
            async for response in method(self, requests, context):
                yield response
        except asyncio.CancelledError:
            _count_cancelled(self, name, context)
            raise
        except Exception as exc:
            await _abort(self, name, exc, context)

    return wrapped
