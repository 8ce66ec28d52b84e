"""Prometheus metrics (METRICS_PORT): the Metrics port recorded with
prometheus_client, served as /metrics by a server thread of their own, and
the decorators that measure ports from the outside (the engine, the conversation locks)."""

from adapters.metrics.measured_engine import MeasuredEngine
from adapters.metrics.measured_locks import MeasuredLocks
from adapters.metrics.prometheus import MetricsServer, PrometheusMetrics

__all__ = ["MeasuredEngine", "MeasuredLocks", "MetricsServer", "PrometheusMetrics"]
