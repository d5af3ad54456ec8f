"""The grpc.aio server: the engine behind the embedder.v1 door, health, reflection, metrics,
TLS and token auth, graceful drain."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import replace
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedder.core.errors import EmbedderError
from embedder.engine.engine import Engine
from embedder.serving.auth import BearerTokenInterceptor
from embedder.serving.config import ServerConfig
from embedder.serving.http import HttpDoor
from embedder.serving.kserve_grpc import KServeServicer
from embedder.serving.servicer import EmbedderServicer
from embedder.serving.status import add_service
from protos.embedder.v1 import embedder_pb2 as pb
from protos.inference.v2 import messages as v2

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Embedder"].full_name
V2_SERVICE_NAME = v2.SERVICE
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def _check_key_pair(cert: Path, key: Path) -> None:
    """Load the pair as a TLS server would, before binding: grpc reports a bad pair only as a
    failure to listen."""
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if "KEY_VALUES_MISMATCH" in str(exc) or "key values mismatch" in str(exc):
            raise EmbedderError(
                f"the TLS key {key} does not match the certificate {cert}; pass the key the "
                "certificate was made with"
            ) from exc
        raise EmbedderError(
            f"cannot use {cert} and {key} as a TLS certificate and key ({exc}); both must be PEM"
        ) from exc


def reflection_pool():
    """Every served service's descriptors in one pool: KServe v2's live in a private pool (so
    tritonclient can share the process), the others in protobuf's default one."""
    from google.protobuf import descriptor_pb2, descriptor_pool
    from grpc_reflection.v1alpha import reflection_pb2

    pool = descriptor_pool.DescriptorPool()
    for module in (pb, health_pb2, reflection_pb2):
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        pool.Add(file)
    file = descriptor_pb2.FileDescriptorProto()
    v2.FILE.CopyToProto(file)
    pool.Add(file)
    return pool


def http_door(engine: Engine, config: ServerConfig) -> HttpDoor:
    """The HTTP port with every protocol it speaks."""
    from embedder.serving import kserve_rest, openai

    routes = [*openai.OpenAIRoutes(engine).routes(), *kserve_rest.KServeRoutes(engine).routes()]
    errors = {"openai": openai.error_body, "kserve-v2": kserve_rest.error_body}
    return HttpDoor(engine, config, errors, routes)


class EmbedderServer:
    """Start with `await start()`, stop with `await stop()`; `port` is the bound port."""

    def __init__(self, config: ServerConfig):
        self.engine = Engine(config.engine)
        self.config = replace(config, engine=self.engine.config)  # thread defaults made concrete
        self.metrics = self.engine.metrics
        self.health = health.aio.HealthServicer()
        self.servicer = EmbedderServicer(self.engine, self.config)
        self.server: grpc.aio.Server | None = None
        self.http: HttpDoor | None = None
        self.port: int = 0
        self.http_port: int = 0

    def _credentials(self):
        c = self.config
        if c.tls_cert is None and c.tls_key is None:
            return None
        if c.tls_cert is None or c.tls_key is None:
            raise EmbedderError("TLS needs both --tls-cert and --tls-key")
        try:
            pair = (c.tls_key.read_bytes(), c.tls_cert.read_bytes())
        except OSError as exc:
            raise EmbedderError(f"cannot read the TLS key or certificate: {exc}") from exc
        _check_key_pair(c.tls_cert, c.tls_key)
        return grpc.ssl_server_credentials([pair])

    async def start(self) -> int:
        c = self.config
        interceptors = [BearerTokenInterceptor(c.auth_token)] if c.auth_token else []
        options = [
            ("grpc.max_receive_message_length", c.max_message_bytes),
            ("grpc.max_send_message_length", c.max_message_bytes),
            # A second server on a taken port fails rather than shares it, unless it is one of
            # --workers N, which share their ports by design.
            ("grpc.so_reuseport", int(c.reuse_port)),
        ]
        self.server = grpc.aio.server(interceptors=interceptors, options=options)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        add_service(self.server, pb.DESCRIPTOR.services_by_name["Embedder"], self.servicer)
        add_service(self.server, v2.FILE.services_by_name["GRPCInferenceService"],
                    KServeServicer(self.engine, c.max_message_bytes))  # fmt: skip
        for name in ("", SERVICE_NAME, V2_SERVICE_NAME):
            await self.health.set(name, NOT_SERVING)
        reflection.enable_server_reflection(
            (SERVICE_NAME, V2_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.server, pool=reflection_pool(),
        )  # fmt: skip
        credentials = self._credentials()
        try:
            if credentials:
                self.port = self.server.add_secure_port(c.address, credentials)
            else:
                self.port = self.server.add_insecure_port(c.address)
        except RuntimeError as exc:  # grpc's "Failed to bind"
            raise EmbedderError(
                f"cannot listen on {c.address} ({exc}); is another server using the port? "
                "pick another --address"
            ) from exc
        # A lone server listens at once and its health answers NOT_SERVING while the models load
        # and warm up. One of --workers N on shared ports listens only once it can serve: the
        # kernel would hand it new connections meanwhile, and their calls would fail.
        ready_first = c.reuse_port
        try:
            if ready_first:
                await self._load_and_warm()
            await self.server.start()
            if c.http_address:
                self.http = http_door(self.engine, self.config)
                self.http_port = await self.http.start()
            if not ready_first:
                await self._load_and_warm()
        except BaseException:
            await self.server.stop(None)  # a half-started server must not keep the port
            if self.http:
                await self.http.stop()
            await self.engine.close()
            raise
        for name in ("", SERVICE_NAME, V2_SERVICE_NAME):
            await self.health.set(name, SERVING)
        log.info("serving %d model(s) on port %d", len(self.engine.models), self.port)
        return self.port

    async def _load_and_warm(self) -> None:
        c, e = self.config, self.engine.config
        loop = asyncio.get_running_loop()
        repository = await loop.run_in_executor(None, self.engine.load)
        if not repository.models:
            refused = "; ".join(f"{k}: {why}" for k, why in repository.refused.items())
            raise EmbedderError(
                f"no servable model in {e.repository}: every model was refused ({refused})"
                if refused
                else f"no servable model in {e.repository}; export one with embedder-export"
            )
        if e.warmup:
            await loop.run_in_executor(None, self.engine.warm_up)
        self.engine.start()
        if (metrics := c.metrics_host_port()) is not None:
            self.metrics.serve(*metrics)

    async def stop(self, grace: float | None = None) -> None:
        """Drain for `grace` seconds (default --drain-seconds): health answers NOT_SERVING and
        new work is refused with UNAVAILABLE, so load balancers see the change and move
        traffic, while requests in flight finish; then the listener closes."""
        window = self.config.drain_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self.engine.refuse_new_work()
        if self.server:
            if window > 0:
                await asyncio.sleep(window)
            await self.server.stop(0)  # what still runs after the window is cancelled
        if self.http:
            await self.http.stop()
        await self.engine.close()


def listening_line(port: int, http_port: int | None, workers: int = 1) -> str:
    """The one line a server prints when every port listens (launch.ServeProcess reads it)."""
    http = f", HTTP on port {http_port}" if http_port else ""
    processes = f" ({workers} workers)" if workers > 1 else ""
    return f"embedder-serve: listening on port {port}{http}{processes}"


async def serve_forever(config: ServerConfig, ready=None) -> None:
    """Serve until SIGTERM / SIGINT, then drain. `ready(port, http_port)` is called once both
    ports listen (a worker tells its supervisor); without it, the listening line is printed."""
    server = EmbedderServer(config)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    if ready is not None:
        ready(server.port, server.http_port)
    else:
        print(listening_line(server.port, server.http_port), flush=True)
    await stopping.wait()
    log.info("draining for %g s: health NOT_SERVING, new requests refused", config.drain_seconds)
    await server.stop()
