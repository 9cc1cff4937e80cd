"""/metrics: the store's state and counts in Prometheus text format, under etcd's names.

Everything is read when Prometheus scrapes: the store's state directly, and the plain counts
the wire layer and the WAL keep (one dict or integer update per call or per group commit).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from clustertui.backend.kv.apply import Store
from clustertui.backend.kv.stats import Histogram


def _code_name(code: grpc.StatusCode) -> str:
    """grpc-go's names of the codes, as go-grpc-prometheus labels them (``NotFound``)."""
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


def _grpc_type(handler: Any) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    if handler.response_streaming:
        return "server_stream"
    return "unary"


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, buckets=histogram.cumulative(), sum_value=histogram.sum)


class _StoreCollector(Collector):
    def __init__(self, store: Store, streams: set[Any] | None, wire: Any) -> None:
        self.store = store
        self.streams = streams
        self.wire = wire

    def collect(self) -> Iterator[Metric]:
        store = self.store
        space = store.space
        try:
            size = store.wal.disk_size() + (store.config.data_dir / "member.json").stat().st_size
        except OSError:
            size = 0
        gauges = [
            ("etcd_server_has_leader", "Whether or not a leader exists. 1 is existence.", 1),
            ("etcd_server_is_leader", "Whether or not this member is a leader.", 1),
            (
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
                store.applied_index,
            ),
            (
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
                store.applied_index,
            ),
            ("etcd_server_proposals_pending", "The current number of pending proposals.", 0),
            (
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
                size,
            ),
            (
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
                min(size, space.size + 64),
            ),
            (
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
                len(space.keys) - len(space.dead),
            ),
            (
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
                space.revision,
            ),
            (
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
                space.compacted,
            ),
            ("etcd_debugging_mvcc_watcher_total", "Total number of watchers.", len(store.hub)),
            (
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
                store.config.quota_bytes,
            ),
            (
                "clusterd_kv_leases",
                "Leases alive (clusterd's own; etcd has no such gauge).",
                len(store.lessor.leases),
            ),
        ]
        if self.streams is not None:
            gauges.append(
                (
                    "etcd_debugging_mvcc_watch_stream_total",
                    "Total number of watch streams.",
                    len(self.streams),
                )
            )
        for name, doc, value in gauges:
            yield GaugeMetricFamily(name, doc, value=value)
        yield CounterMetricFamily(
            "etcd_server_leader_changes_seen", "The number of leader changes seen.", value=1
        )
        yield CounterMetricFamily(
            "etcd_server_proposals_failed", "The total number of failed proposals seen.", value=0
        )
        server_id = GaugeMetricFamily(
            "etcd_server_id", "Server or member ID in hexadecimal format.", labels=["server_id"]
        )
        server_id.add_metric([f"{store.member_id:x}"], 1)
        yield server_id
        wal = store.wal
        yield _histogram(
            "etcd_disk_wal_fsync_duration_seconds",
            "The latency distributions of fsync called by WAL.",
            wal.fsync_seconds,
        )
        yield _histogram(
            "etcd_disk_backend_commit_duration_seconds",
            "The latency distributions of commit called by backend.",
            wal.commit_seconds,
        )
        wire = self.wire
        if wire is None:
            return
        yield CounterMetricFamily(
            "etcd_network_client_grpc_received_bytes",
            "The total number of bytes received from grpc clients.",
            value=wire.bytes_received,
        )
        yield CounterMetricFamily(
            "etcd_network_client_grpc_sent_bytes",
            "The total number of bytes sent to grpc clients.",
            value=wire.bytes_sent,
        )
        labels = ["grpc_method", "grpc_service", "grpc_type"]
        started = CounterMetricFamily(
            "grpc_server_started", "Total number of RPCs started on the server.", labels=labels
        )
        handled = CounterMetricFamily(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            labels=["grpc_code", *labels],
        )
        counts_started = dict(wire.calls_started)
        counts_handled = dict(wire.calls_handled)
        by_handler: dict[Any, list[str]] = {}
        for path, handler in wire.handlers.items():
            service, _, method = path.decode().strip("/").rpartition("/")
            names = [method, service, _grpc_type(handler)]
            by_handler[handler] = names
            started.add_metric(names, counts_started.get(handler, 0))
        for (handler, code), count in sorted(
            counts_handled.items(),
            key=lambda item: (by_handler.get(item[0][0], []), item[0][1].name),
        ):
            handler_names = by_handler.get(handler)
            if handler_names is not None:
                handled.add_metric([_code_name(code), *handler_names], count)
        yield started
        yield handled


class StoreMetrics:
    """The registry /metrics renders: the store's collector and the process's."""

    def __init__(self, store: Store, streams: set[Any] | None = None, wire: Any = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(store, streams, wire))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, kind = choose_encoder(accept)
        return encoder(self.registry), kind
