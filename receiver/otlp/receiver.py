"""OtlpReceiver: OTLP/gRPC and OTLP/HTTP servers on the running asyncio loop.

Wire it in front of a `receiver.pipeline.queue.BoundedQueue` (the receiver calls the consumer on the event
loop, so the consumer must be quick and non-blocking; the queue is).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

import grpc
from aiohttp import web
from prometheus_client import CollectorRegistry

from receiver.model import LogsConsumer, TracesConsumer
from receiver.otlp.auth import BearerAuth
from receiver.otlp.config import OtlpConfig
from receiver.otlp.grpc_server import BearerAuthInterceptor, otlp_generic_handlers
from receiver.otlp.http_server import OtlpHttpHandlers
from receiver.otlp.ingest import Ingest, ReceiverMetrics

log = logging.getLogger(__name__)


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host.strip("[]"), int(port)


class OtlpReceiver:
    def __init__(
        self,
        config: OtlpConfig,
        traces: TracesConsumer | None,
        logs: LogsConsumer | None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        config.validate()
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ReceiverMetrics(self.registry)
        self.ingest = Ingest(traces, logs, self.metrics, config.retry_after_s)
        self._auth = BearerAuth(config.auth.load_tokens()) if config.auth.enabled else None
        self._grpc_services: list[Callable[[grpc.aio.Server], None]] = []
        self._grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self.grpc_port: int | None = None
        self.http_port: int | None = None
        self._started = False

    def add_grpc_service(self, fn: Callable[[grpc.aio.Server], None]) -> None:
        """Register extra gRPC services on the OTLP gRPC server, e.g.
        `receiver.add_grpc_service(lambda s: add_FooServicer_to_server(servicer, s))`. Call before start().
        Bearer auth and TLS apply to them too."""
        if self._started:
            raise RuntimeError("add_grpc_service must be called before start()")
        self._grpc_services.append(fn)

    # --- TLS ---------------------------------------------------------------------------------
    def _grpc_credentials(self) -> grpc.ServerCredentials:
        tls = self.config.tls
        ca = _read(tls.client_ca_file) if tls.client_ca_file else None
        return grpc.ssl_server_credentials(
            [(_read(tls.key_file), _read(tls.cert_file))],
            root_certificates=ca,
            require_client_auth=ca is not None,
        )

    def _ssl_context(self) -> ssl.SSLContext:
        tls = self.config.tls
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.min_version == "1.3" else ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls.cert_file, tls.key_file)
        if tls.client_ca_file:
            ctx.load_verify_locations(cafile=tls.client_ca_file)
            ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            if self.config.grpc_endpoint:
                await self._start_grpc()
            if self.config.http_endpoint:
                await self._start_http()
        except BaseException:
            await self.shutdown()
            raise

    async def _start_grpc(self) -> None:
        cfg = self.config
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", cfg.max_recv_bytes),
            ("grpc.so_reuseport", 0),
            # Tolerate client keepalive pings (Collector clients may ping every 10 s) instead of GOAWAY.
            ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ("grpc.keepalive_permit_without_calls", 1),
        ]
        if cfg.max_concurrent_streams:
            options.append(("grpc.max_concurrent_streams", cfg.max_concurrent_streams))
        interceptors = [BearerAuthInterceptor(self._auth, self.metrics)] if self._auth else []
        server = grpc.aio.server(options=options, interceptors=interceptors)
        server.add_generic_rpc_handlers(otlp_generic_handlers(self.ingest))
        for fn in self._grpc_services:
            fn(server)
        endpoint = cfg.grpc_endpoint
        try:
            if cfg.tls.enabled:
                port = server.add_secure_port(endpoint, self._grpc_credentials())
            else:
                port = server.add_insecure_port(endpoint)
        except RuntimeError as exc:  # grpcio: "Failed to bind to address ..."
            raise OSError(f"otlp.grpc_endpoint: cannot listen on {endpoint}: {exc}") from None
        if port == 0:
            raise OSError(f"otlp.grpc_endpoint: cannot listen on {endpoint}")
        await server.start()
        self._grpc = server
        self.grpc_port = port
        log.info(
            "OTLP/gRPC listening on %s (port %d)%s", endpoint, port, " with TLS" if cfg.tls.enabled else ""
        )

    async def _start_http(self) -> None:
        cfg = self.config
        app = web.Application(client_max_size=cfg.max_recv_bytes + 1)
        OtlpHttpHandlers(self.ingest, cfg.max_recv_bytes, self._auth).add_routes(
            app, cfg.traces_url_path, cfg.logs_url_path
        )
        runner = web.AppRunner(app, auto_decompress=False, access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        host, port = _split_endpoint(cfg.http_endpoint)
        site = web.TCPSite(
            runner, host, port, ssl_context=self._ssl_context() if cfg.tls.enabled else None, reuse_port=False
        )
        try:
            await site.start()
        except OSError as exc:
            raise OSError(
                f"otlp.http_endpoint: cannot listen on {cfg.http_endpoint}: {exc.strerror or exc}"
            ) from None
        self.http_port = int(runner.addresses[0][1])
        log.info(
            "OTLP/HTTP listening on %s (port %d)%s",
            cfg.http_endpoint,
            self.http_port,
            " with TLS" if cfg.tls.enabled else "",
        )

    async def shutdown(self, grace_s: float = 5.0) -> None:
        """Stop accepting; in-flight exports finish (up to grace_s). Safe without start, idempotent."""
        grpc_server, self._grpc = self._grpc, None
        runner, self._runner = self._runner, None
        if grpc_server is not None:
            await grpc_server.stop(grace_s)
        if runner is not None:
            await runner.cleanup()
