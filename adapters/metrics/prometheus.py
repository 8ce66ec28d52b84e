"""The Metrics port with prometheus_client, and the /metrics HTTP server.

The gRPC names and labels are go-grpc-prometheus's (grpc_server_started_total,
grpc_server_handled_total, grpc_server_handling_seconds with grpc_type,
grpc_service, grpc_method, grpc_code), so the platform's dashboards and
alerts for gRPC servers work unchanged; the service's own are chat_*.

Each instance has a registry of its own (not prometheus_client's global
one): nothing is registered at import time, and tests can build several.
Every label value comes from a fixed set; a value outside it (an engine
failure reason a future adapter invents, say) is recorded as "other", so
no input can grow the number of series. The one tenant label is opt-in and
bounded the same way (tenant_labels.py).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from adapters.metrics.tenant_labels import TenantLabels
from chat_service.domain.enums import Channel
from chat_service.domain.events import EventType
from chat_service.ports import ConversationChange

log = logging.getLogger(__name__)

# Labels per metric, checked by tests/unit/test_metrics_labels.py: none may
# name a tenant, user, conversation or message. The per-tenant metrics
# (PER_TENANT) add `tenant` to these when METRICS_TENANT_LABELS lists tenants.
GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
GRPC_HANDLED_LABELS = (*GRPC_LABELS, "grpc_code")
MESSAGE_LABELS = ("channel", "direction")
DELIVERY_LABELS = ("channel", "outcome")

ENGINE_OUTCOMES = frozenset({"ok", "timeout", "unavailable", "error"})
FALLBACK_REASONS = frozenset({"timeout", "unavailable", "error", "invalid_reply"})
ATTEMPT_OUTCOMES = frozenset({"sent", "failed"})
OPEN_KINDS = frozenset({"streams", "watches"})
GRPC_KINDS = frozenset({"unary", "client_stream", "server_stream", "bidi_stream"})
LOCK_OUTCOMES = frozenset({"acquired", "timeout"})
OTHER = "other"
# What an operator asks about one tenant: its traffic (messages in and out),
# its refusals by its own rate limit, and its deliveries (a tenant's broken
# channel credentials fail its deliveries only). Not the RPCs (counted
# before the caller is authenticated, with go-grpc-prometheus's label set),
# the engine's calls and fallbacks, lock waits, open streams or the outbox
# lag: shared parts of the service, whose trouble is not one tenant's.
PER_TENANT = (
    "chat_messages_total",
    "chat_rate_limited_total",
    "chat_delivery_attempts_total",
    "chat_delivery_retries_total",
    "chat_delivery_dead_lettered_total",
)

# RPCs: from a millisecond (a health check, a read on SQLite) to
# REQUEST_TIMEOUT_MS (30 s by default), so that no call the service lets run
# lands in +Inf; Prometheus's default buckets stop at 5 ms and 10 s.
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Engine calls take from milliseconds (the builtin engine) to the engine
# timeout (MCP_ENGINE_TIMEOUT_MS, 8 s by default; at most 30 s).
ENGINE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Lock waits: most are granted at once (well under a millisecond), a
# contended one waits out the holder's call (up to LOCK_TIMEOUT, seconds).
LOCK_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _bounded(value: str, allowed: frozenset[str]) -> str:
    return value if value in allowed else OTHER


class PrometheusMetrics:
    """Metrics recorded in `registry` (a new one when not given); the
    PER_TENANT ones labelled `tenant` when `tenant_labels` lists tenants."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, tenant_labels: Iterable[str] = ()
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._tenant = TenantLabels(tenant_labels)
        tenant = self._tenant.names
        r = self.registry
        self._started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            GRPC_LABELS,
            registry=r,
        )
        self._handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, whatever their status.",
            GRPC_HANDLED_LABELS,
            registry=r,
        )
        # A stream's whole life counts, so long streams land in +Inf (filter
        # on grpc_type="unary" for latencies).
        self._handling = Histogram(
            "grpc_server_handling_seconds",
            "Time from the start of an RPC to its status.",
            GRPC_LABELS,
            buckets=RPC_BUCKETS,
            registry=r,
        )
        self._messages = Counter(
            "chat_messages_total",
            "Messages stored: in (from users) and out (replies), per channel.",
            (*MESSAGE_LABELS, *tenant),
            registry=r,
        )
        self._engine_seconds = Histogram(
            "chat_engine_request_seconds",
            "Bot engine calls, by engine and outcome (ok, timeout, unavailable, error).",
            ("engine", "outcome"),
            buckets=ENGINE_BUCKETS,
            registry=r,
        )
        self._fallbacks = Counter(
            "chat_engine_fallbacks_total",
            "Fallback replies stored instead of the engine's, by reason.",
            ("reason",),
            registry=r,
        )
        # Three counters, not one with outcome=retried|dead_lettered too: a
        # failed attempt is also a retry or a dead letter, and summing one
        # metric over its labels must not count it twice.
        self._attempts = Counter(
            "chat_delivery_attempts_total",
            "Delivery attempts to platforms per channel: sent or failed.",
            (*DELIVERY_LABELS, *tenant),
            registry=r,
        )
        self._retries = Counter(
            "chat_delivery_retries_total",
            "Delivery retries scheduled after a failed attempt, per channel.",
            ("channel", *tenant),
            registry=r,
        )
        self._dead_lettered = Counter(
            "chat_delivery_dead_lettered_total",
            "Replies given up (stored FAILED) after their last failed attempt, per channel.",
            ("channel", *tenant),
            registry=r,
        )
        self._rate_limited = Counter(
            "chat_rate_limited_total",
            "Calls refused by the per-tenant rate limit (RESOURCE_EXHAUSTED).",
            tenant,
            registry=r,
        )
        self._open = Gauge(
            "chat_open_streams",
            "Open StreamConversation streams (kind=streams) and watches (kind=watches).",
            ("kind",),
            registry=r,
        )
        self._lock_wait = Histogram(
            "chat_lock_wait_seconds",
            "Waits for a conversation's lock, by outcome (acquired, timeout).",
            ("outcome",),
            buckets=LOCK_BUCKETS,
            registry=r,
        )
        self._outbox_lag = Gauge(
            "chat_outbox_lag_events",
            "Events in the outbox not yet published, after the relay's last batch.",
            registry=r,
        )

    def _series(self, metric: Any, *labels: str) -> Any:
        """metric.labels(*labels), kept: labels() validates and locks on
        every call (3 µs), and SendMessage records 6 series. The label
        values are bounded, so is this dict; a race between threads would
        only look the same series up twice (labels() returns one child)."""
        key = (metric, labels)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = metric.labels(*labels)
        return series

    def rpc_started(self, service: str, method: str, kind: str) -> None:
        self._series(self._started, _bounded(kind, GRPC_KINDS), service, method).inc()

    def rpc_handled(self, service: str, method: str, kind: str, code: str, seconds: float) -> None:
        labels = (_bounded(kind, GRPC_KINDS), service, method)
        self._series(self._handled, *labels, code).inc()
        self._series(self._handling, *labels).observe(seconds)

    def committed(self, change: ConversationChange) -> None:
        tenant = self._tenant.values(change.conversation.tenant_id)
        for message in change.messages:
            direction = "out" if message.is_outbound else "in"
            self._series(self._messages, message.channel.value, direction, *tenant).inc()
        for event in change.events:
            if event.event_type is EventType.FALLBACK_USED:
                reason = str(event.metadata.get("reason", ""))
                self._fallbacks.labels(_bounded(reason, FALLBACK_REASONS)).inc()

    def engine_called(self, engine: str, outcome: str, seconds: float) -> None:
        outcome = _bounded(outcome, ENGINE_OUTCOMES)
        self._series(self._engine_seconds, engine, outcome).observe(seconds)

    def delivery(self, tenant_id: str, channel: Channel, outcome: str) -> None:
        tenant = self._tenant.values(tenant_id)
        if outcome == "retried":
            self._series(self._retries, channel.value, *tenant).inc()
        elif outcome == "dead_lettered":
            self._series(self._dead_lettered, channel.value, *tenant).inc()
        else:
            outcome = _bounded(outcome, ATTEMPT_OUTCOMES)
            self._series(self._attempts, channel.value, outcome, *tenant).inc()

    def rate_limited(self, tenant_id: str) -> None:
        tenant = self._tenant.values(tenant_id)
        # Unlabelled, the metric is its only series (labels() refuses no labels).
        (self._series(self._rate_limited, *tenant) if tenant else self._rate_limited).inc()

    def gauge_open(self, kind: str, count: Callable[[], int]) -> None:
        # Read in the server's thread at each scrape: a len() of a set,
        # atomic under the GIL.
        self._open.labels(_bounded(kind, OPEN_KINDS)).set_function(count)

    def lock_waited(self, outcome: str, seconds: float) -> None:
        self._series(self._lock_wait, _bounded(outcome, LOCK_OUTCOMES)).observe(seconds)

    def outbox_lag(self, events: int) -> None:
        self._outbox_lag.set(events)


class MetricsServer:
    """/metrics (any path answers, as prometheus_client's server does) on
    `host:port`, from a daemon thread of its own, so that a scrape never
    waits for the event loop, nor the loop for a scrape."""

    def __init__(self, metrics: PrometheusMetrics, host: str, port: int) -> None:
        self._registry = metrics.registry
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one chosen, with port 0)."""
        if self._server is None:
            return self._port
        return int(self._server.server_port)

    async def start(self) -> None:
        try:
            self._server, self._thread = start_http_server(
                self._port, addr=self._host, registry=self._registry
            )
        except OSError as exc:
            raise OSError(
                f"cannot listen on {self._host}:{self._port} for /metrics "
                f"({exc.strerror or exc}); check METRICS_PORT and SERVICE_HOST"
            ) from exc
        log.info("serving metrics on http://%s:%d/metrics", self._host, self.port)

    async def close(self) -> None:
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None:
            return
        # shutdown() waits for serve_forever's loop (up to its 0.5 s poll):
        # in a thread, not on the event loop. server_close() frees the port.
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        if thread is not None:
            await asyncio.to_thread(thread.join, 1.0)
