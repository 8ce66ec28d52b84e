"""The gRPC server: ChatService, health, reflection, and a graceful drain.

On SIGTERM (or SIGINT) the server reports NOT_SERVING on health and keeps
serving for SHUTDOWN_DELAY_SECONDS, so that load balancers see it and stop
sending; then it stops taking new calls, ends every open stream and watch
at once (UNAVAILABLE, reason SERVER_DRAINING, with `resume_after_sequence`
or `resume_token` in the ErrorInfo metadata: reconnect elsewhere and
resume), lets other in-flight calls finish within SHUTDOWN_GRACE_SECONDS,
finishes deliveries and publishes what is left in the outbox, and exits.

A start that cannot work because something it needs cannot be reached (the
store, the port to listen on) raises StartupFailed, naming the setting that
points at it; `python -m chat_service` prints it on one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from chatbot.chat.v1 import chat_service_pb2, chat_service_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from chat_service.auth import Principal
from chat_service.bootstrap import build_services
from chat_service.config import Settings
from chat_service.domain.errors import Unavailable
from chat_service.grpc_api.auth_interceptor import AuthInterceptor
from chat_service.grpc_api.error_interceptor import ErrorTranslationInterceptor
from chat_service.grpc_api.metrics_interceptor import MetricsInterceptor
from chat_service.grpc_api.servicer import ChatServicer
from chat_service.grpc_api.tracing_interceptor import TracingInterceptor
from chat_service.ports import NoMetrics, StoreUnavailable
from chat_service.wiring import Services

log = logging.getLogger(__name__)

# grpc-stubs predates grpc_health's asyncio servicer, hence the ignore.
AsyncHealthServicer = health.aio.HealthServicer  # type: ignore[attr-defined]

CHAT_SERVICE_NAME = chat_service_pb2.DESCRIPTOR.services_by_name["ChatService"].full_name

# A failure's own words, cut to fit one line (drivers describe whole topologies).
_MAX_CAUSE_LENGTH = 200


class StartupFailed(Exception):
    """What the service needs at start cannot be used: `what`, and the
    `variable` (setting) that points at it."""

    def __init__(self, what: str, variable: str) -> None:
        super().__init__(f"{what}; check {variable}")
        self.what = what
        self.variable = variable


SERVER_OPTIONS = [
    # Ping idle connections so dead peers (and their streams) are noticed,
    # and let clients ping every 10 s without being told off.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_receive_message_length", 4 * 1024 * 1024),
]


def server_options(settings: Settings) -> list[tuple[str, int]]:
    """SO_REUSEPORT only in the workers of `serve --workers N`, which share
    the port on purpose (the kernel spreads connections over them). A lone
    process keeps it off, so that a second process on its port fails to
    start instead of silently taking half its connections (and its outbox
    relay owner id, bootstrap.relay_owner)."""
    reuse_port = 0 if settings.worker_index is None else 1
    return [*SERVER_OPTIONS, ("grpc.so_reuseport", reuse_port)]


def build_server(services: Services) -> tuple[grpc.aio.Server, Any]:
    settings = services.settings

    async def admit(principal: Principal, method: str) -> None:
        await services.admission.admit(principal.tenant_id)

    interceptors: list[grpc.aio.ServerInterceptor] = [  # type: ignore[type-arg]
        ErrorTranslationInterceptor(domain=settings.service_name),
        AuthInterceptor(services.verifier, domain=settings.service_name, admit=admit),
    ]
    if not isinstance(services.metrics, NoMetrics):  # no cost on the calls without METRICS_PORT
        # Outermost: it sees the status the caller gets, refusals included.
        interceptors.insert(0, MetricsInterceptor(services.metrics))
    if services.rpc_tracer is not None:  # nor without OTEL_EXPORTER_OTLP_ENDPOINT
        # Outermost too: the span is current in the metrics and auth scopes.
        interceptors.insert(0, TracingInterceptor(services.rpc_tracer))
    server = grpc.aio.server(interceptors=interceptors, options=server_options(settings))
    chat_service_pb2_grpc.add_ChatServiceServicer_to_server(
        ChatServicer(
            send_message=services.send_message,
            queries=services.queries,
            update_status=services.update_status,
            streams=services.streams,
            watch=services.watch,
            export=services.export,
            connections=services.connections,
            retry_delivery=services.retry_delivery,
            handle_webhook=services.handle_webhook,
            verify_webhook=services.verify_webhook,
            error_domain=settings.service_name,
        ),
        server,
    )
    health_servicer = AsyncHealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (CHAT_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    return server, health_servicer


async def serve(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Serve until `stop` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with _store_failures(settings):
        services = await build_services(settings)
    server, health_servicer = build_server(services)
    try:
        try:
            port = server.add_insecure_port(f"{settings.host}:{settings.port}")
        except RuntimeError as exc:
            raise StartupFailed(
                f"cannot listen on {settings.host}:{settings.port} ({_brief(exc)})",
                "SERVICE_HOST and SERVICE_PORT",
            ) from exc
        # Background work first: the outbox relay and the event tail must run
        # before the first call is taken.
        with _store_failures(settings):
            await services.start()
        await server.start()
    except BaseException:
        await server.stop(None)
        await services.close()
        raise
    for name in ("", CHAT_SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info(
        "%s serving gRPC on %s:%d%s", settings.service_name, settings.host, port, _who(settings)
    )
    if on_ready is not None:
        on_ready(port)
    try:
        await stop.wait()
    finally:
        log.info("draining: NOT_SERVING, finishing in-flight calls")
        await health_servicer.enter_graceful_shutdown()
        await asyncio.sleep(settings.shutdown_delay_seconds)
        stopping = asyncio.ensure_future(server.stop(settings.shutdown_grace_seconds))
        await asyncio.sleep(0)  # new calls are refused from here on
        services.end_streams()
        await stopping
        await services.close()
        log.info("stopped")


@contextlib.contextmanager
def _store_failures(settings: Settings) -> Iterator[None]:
    """The store cannot be reached while starting: StartupFailed. Only the
    store does I/O while the core is built and started (Redis and Kafka
    connect lazily and wait for their servers)."""
    try:
        yield
    except (StoreUnavailable, Unavailable) as exc:
        if isinstance(exc, Unavailable) and exc.reason != "STORE_UNAVAILABLE":
            raise
        cause = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ else exc
        variable = "MONGODB_URI" if settings.mongodb_uri else "DATA_DIR"
        raise StartupFailed(f"the store is unreachable ({_brief(cause)})", variable) from exc


def _who(settings: Settings) -> str:
    """Which process serves: one alone, or one of `--workers N` (pid: which
    process, for operators and for tests that check each worker serves)."""
    if settings.worker_index is None:
        return " (one process; WORKERS or serve --workers N for more, with REDIS_URL)"
    return f" (worker {settings.worker_index} of {settings.workers}, pid {os.getpid()})"


def _brief(error: BaseException) -> str:
    """The first line of what `error` says, at most _MAX_CAUSE_LENGTH long."""
    text = " ".join(str(error).split("\n", 1)[0].split()) or type(error).__name__
    if len(text) > _MAX_CAUSE_LENGTH:
        return text[: _MAX_CAUSE_LENGTH - 1] + "…"
    return text
