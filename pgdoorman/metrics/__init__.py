"""Prometheus metrics: the text exposition renderer, the collectors and the /metrics HTTP listener."""

from pgdoorman.metrics.server import MetricsServer, start_metrics_server

__all__ = ["MetricsServer", "start_metrics_server"]
