"""`clusterd node --metrics-port`: the node's own /metrics on loopback, in Prometheus text.

Units by state, unit restarts, the engine's reconcile passes and their time, journal lines
written and the overlay lease's age, read from the node's parts when Prometheus scrapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from clustertui.backend.kv.http.conn import HTTPConnection, HTTPLimits, Request, Response, text
from clustertui.backend.kv.stats import Histogram

RECONCILE_BUCKETS = tuple(0.001 * 2**i for i in range(15))


class CountingSink:
    """The journal sink, counting the lines it is given."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.lines = 0

    def line(self, message: bytes, **fields: Any) -> None:
        self.lines += 1
        self.sink.line(message, **fields)

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        self.sink.close()


class NodeMetrics(Collector):
    """What one node exposes; the agent, engine, sink and overlay are set as they start."""

    def __init__(self) -> None:
        self.agent: Any = None
        self.engine: Any = None
        self.sink: CountingSink | None = None
        self.overlay: Any = None
        self.reconcile_seconds = Histogram(RECONCILE_BUCKETS)
        self._lease_seen: tuple[Any, float] | None = None
        self.registry = CollectorRegistry()
        self.registry.register(self)
        ProcessCollector(registry=self.registry)

    def time_engine(self, engine: Any) -> None:
        """Times each reconcile pass of ``engine`` (its own method, wrapped on the instance)."""
        self.engine = engine
        original = engine.reconcile
        seconds = self.reconcile_seconds

        async def reconcile(*args: Any, **kwargs: Any) -> int:
            started = time.perf_counter()
            try:
                passes: int = await original(*args, **kwargs)
                return passes
            finally:
                seconds.observe(time.perf_counter() - started)

        engine.reconcile = reconcile

    def lease_age(self) -> float | None:
        lease = getattr(self.overlay, "lease", None)
        if lease is None:
            self._lease_seen = None
            return None
        identity = (lease.key, lease.revision)
        if self._lease_seen is None or self._lease_seen[0] != identity:
            self._lease_seen = (identity, time.monotonic())
        return time.monotonic() - self._lease_seen[1]

    async def watch_lease(self) -> None:
        """Notes when the overlay's lease changes, so its age is right within a second."""
        while True:
            self.lease_age()
            await asyncio.sleep(1.0)

    def collect(self) -> Iterator[Metric]:
        units = GaugeMetricFamily(
            "clusterd_node_units", "Units placed on this node, by active state.", labels=["state"]
        )
        restarts = 0
        if self.agent is not None:
            counts: dict[str, int] = {}
            for entry in list(self.agent.units.values()):
                runner = entry.runner
                counts[runner.active_state] = counts.get(runner.active_state, 0) + 1
                restarts += runner.restarts
            for state in ("active", "activating", "deactivating", "failed", "inactive"):
                counts.setdefault(state, 0)
            for state, count in sorted(counts.items()):
                units.add_metric([state], count)
        yield units
        yield CounterMetricFamily(
            "clusterd_node_unit_restarts",
            "Restarts of the units running here (Restart= policy).",
            value=restarts,
        )
        if self.engine is not None:
            yield GaugeMetricFamily(
                "clusterd_engine_is_leader",
                "Whether this node's engine leads the scheduling.",
                value=1 if self.engine.is_leader else 0,
            )
            yield CounterMetricFamily(
                "clusterd_engine_reconciles",
                "Reconcile passes this node's engine has made as leader.",
                value=self.engine.reconciles,
            )
            seconds = self.reconcile_seconds
            yield HistogramMetricFamily(
                "clusterd_engine_reconcile_duration_seconds",
                "Time of each reconcile pass.",
                buckets=seconds.cumulative(),
                sum_value=seconds.sum,
            )
        if self.sink is not None:
            yield CounterMetricFamily(
                "clusterd_journal_lines_written",
                "Lines of unit output written to this node's journal.",
                value=self.sink.lines,
            )
        if self.overlay is not None:
            age = self.lease_age()
            yield GaugeMetricFamily(
                "clusterd_overlay_lease_age_seconds",
                "Time since this node's overlay subnet lease was taken or last changed "
                "(absent without a lease).",
                value=age if age is not None else float("nan"),
            )

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, kind = choose_encoder(accept)
        return encoder(self.registry), kind


async def serve_metrics(metrics: NodeMetrics, port: int) -> asyncio.Server:
    """/metrics on 127.0.0.1:``port``, over the store's HTTP/1.1 connection class."""

    async def handle(request: Request) -> Response:
        if request.path != "/metrics":
            return text(404, "404 page not found")
        if request.method not in ("GET", "HEAD"):
            return text(405, "Method Not Allowed")
        body, kind = metrics.render(request.headers.get("accept", ""))
        return Response(200, body, kind)

    limits = HTTPLimits(max_body_bytes=0, max_connections=64)
    connections: set[HTTPConnection] = set()
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HTTPConnection(handle, limits, connections), "127.0.0.1", port
    )
