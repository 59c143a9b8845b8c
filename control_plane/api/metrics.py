"""`/metrics`: Prometheus text exposition of the data plane's counters, read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import APIRouter, Request, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

router = APIRouter(tags=["health"])

StatsSource = Callable[[], dict[str, int]]

# Counters only grow; the rest are levels.
_GAUGES = {
    "sessions_active",
    "cached_decisions",
    "cancel_keys",
    "recording_queue_bytes",
    "recording_queue_bytes_peak",
    "recording_queue_blocks_capacity",
    "recording_block_bytes_max",
}
_HELP = {
    "sessions_total": "Client sessions accepted by the proxy",
    "sessions_active": "Client sessions open now",
    "statements": "Statements (Query strings and Parse messages) decided",
    "cache_hits_text": "Decisions served from the exact-text cache",
    "cache_hits_fingerprint": "Decisions served from the fingerprint cache",
    "python_decisions": "Decisions that asked the Python decision service",
    "denials": "Statements refused",
    "rewrites": "Statements sent upstream rewritten (strict masking)",
    "holds": "Statements held in their session for an approval decision",
    "protocol_errors": "Sessions closed for protocol violations",
    "cached_decisions": "Decisions held in the Rust cache",
    "cancel_keys": "Cancel keys issued and still valid",
    "recording_sessions": "Sessions recorded",
    "recording_failures": "Recordings that could not be started or written (their sessions ended)",
    "recording_bytes_written": "Compressed recording bytes written",
    "recording_queue_bytes": "Recorded bytes queued for the writer",
    "recording_queue_bytes_peak": "Most recorded bytes ever queued for the writer",
    "recording_queue_blocks_capacity": "Blocks the recording queue holds at most",
    "recording_block_bytes_max": "Bytes in one recording block at most",
}


class DataplaneCollector(Collector):
    def __init__(self, source: StatsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        for name, value in sorted(self.source().items()):
            metric_name = f"pgward_proxy_{name}"
            help_text = _HELP.get(name, name.replace("_", " "))
            if name in _GAUGES:
                yield GaugeMetricFamily(metric_name, help_text, value=value)
            else:
                yield CounterMetricFamily(metric_name, help_text, value=value)


def registry_for(source: StatsSource | None) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    if source is not None:
        registry.register(DataplaneCollector(source))
    return registry


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Counters of the proxy in this process (empty when it runs with --api-only)."""
    registry: CollectorRegistry = request.app.state.metrics_registry
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4; charset=utf-8")
