"""The OpenTelemetry SDK as the service runs it: spans batched to an OTLP/gRPC
collector (OTEL_EXPORTER_OTLP_ENDPOINT), sampled as OTEL_TRACES_SAMPLER
says, named by OTEL_SERVICE_NAME. One provider per process (each worker of
`--workers N` has its own), made by the composition root: never the SDK's
global one, so nothing happens at import time and tests can make several.

Exporting never touches a call: spans wait in the batch processor's queue
(2,048 by default, OTEL_BSP_MAX_QUEUE_SIZE) and are dropped, not waited
for, when the collector cannot keep up or is away. The exporter's own
variables (OTEL_EXPORTER_OTLP_HEADERS, _CERTIFICATE, _TIMEOUT, ...) apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from dataclasses import dataclass
from importlib import metadata

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from chat_service.config import TRACE_SAMPLERS

log = logging.getLogger(__name__)

# How long a stop waits for the last spans to leave; the rest are dropped
# rather than holding the drain (Kubernetes' grace period is 30 s in all).
SHUTDOWN_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class TracingSettings:
    endpoint: str  # http(s)://host:port of an OTLP/gRPC receiver
    service_name: str
    instance_id: str  # unique among live processes (bootstrap.relay_owner)
    sampler: str = "parentbased_always_on"
    ratio: float = 1.0


def sampler_of(name: str, ratio: float) -> Sampler:
    if name not in TRACE_SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}")
    parent_based = name.startswith("parentbased_")
    root: Sampler
    match name.removeprefix("parentbased_"):
        case "always_on":
            root = ALWAYS_ON
        case "always_off":
            root = ALWAYS_OFF
        case _:
            root = TraceIdRatioBased(ratio)
    return ParentBased(root) if parent_based else root


def open_tracer_provider(settings: TracingSettings) -> TracerProvider:
    """A provider exporting to `settings.endpoint` in the background."""
    try:
        version = metadata.version("chat-service")
    except metadata.PackageNotFoundError:
        version = "unknown"
    resource = Resource.create(
        {
            "service.name": settings.service_name,
            "service.version": version,
            "service.instance.id": settings.instance_id,
        }
    )
    provider = TracerProvider(
        resource=resource, sampler=sampler_of(settings.sampler, settings.ratio)
    )
    exporter = OTLPSpanExporter(
        endpoint=settings.endpoint, insecure=settings.endpoint.lower().startswith("http://")
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


async def shut_down(provider: TracerProvider) -> None:
    """Sends what is left (within SHUTDOWN_SECONDS) and stops the exporter.
    The SDK's shutdown blocks, and with the collector away it retries for
    longer than a drain may take: it runs in a daemon thread, left behind
    if it overruns."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def run() -> None:
        try:
            provider.shutdown()
        except Exception:
            log.exception("tracing: shutting the exporter down failed")
        finally:
            # RuntimeError: the loop closed first, nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(finished)

    threading.Thread(target=run, name="tracing shutdown", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), SHUTDOWN_SECONDS)
    except TimeoutError:
        log.warning("tracing: spans not exported within %gs were dropped", SHUTDOWN_SECONDS)
