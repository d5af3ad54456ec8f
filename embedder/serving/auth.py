"""Bearer-token auth, one rule on every door: the probes answer without a token (a load
balancer's or Kubernetes' health checks carry none), everything else needs it - inference,
metadata, model readiness, listings and server reflection alike. Prometheus metrics are on a
port of their own, on loopback unless `--metrics-address` says otherwise (README, "Security").
"""

from __future__ import annotations

import hmac

import grpc

# gRPC methods that answer without a token: grpc.health.v1 and KServe v2's server probes.
OPEN_GRPC_METHODS = frozenset({
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
    "/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady",
})  # fmt: skip
# HTTP paths that answer without a token: KServe v2's server probes.
OPEN_HTTP_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


def _matches(token: str, given: str) -> bool:
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def bearer_token_ok(token: str | None, path: str, given: str) -> bool:
    """Whether an HTTP request for `path` with `Authorization: given` may go on."""
    return not token or path in OPEN_HTTP_PATHS or _matches(token, given)


def _rewrap(handler: grpc.RpcMethodHandler, unary, stream) -> grpc.RpcMethodHandler:
    kwargs = dict(
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **kwargs)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(stream(handler.stream_stream), **kwargs)
    if handler.unary_stream:  # server reflection's and health's Watch shapes
        return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **kwargs)
    return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **kwargs)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Requires `authorization: Bearer <token>` on every method but OPEN_GRPC_METHODS."""

    def __init__(self, token: str):
        self._token = token

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None or details.method in OPEN_GRPC_METHODS:
            return handler
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if _matches(self._token, given):
            return handler

        async def deny_unary(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        async def deny_stream(requests, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")
            yield  # pragma: no cover  (makes this an async generator)

        return _rewrap(handler, lambda _: deny_unary, lambda _: deny_stream)
