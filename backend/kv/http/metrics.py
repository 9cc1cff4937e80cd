"""/metrics: the store's state in Prometheus text format, under etcd's metric names.

Everything is read from the store when Prometheus scrapes: the request path pays nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backend.kv.apply import Store


class _StoreCollector(Collector):
    def __init__(self, store: Store, streams: set[object] | None) -> None:
        self.store = store
        self.streams = streams

    def collect(self) -> Iterator[Metric]:
        store = self.store
        space = store.space

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield gauge(
            "etcd_server_has_leader", "Whether or not a leader exists. 1 is existence, 0 is not.", 1
        )
        yield gauge(
            "etcd_server_is_leader",
            "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            1,
        )
        yield CounterMetricFamily(
            "etcd_server_leader_changes_seen", "The number of leader changes seen.", value=1
        )
        yield gauge(
            "etcd_server_proposals_committed_total",
            "The total number of consensus proposals committed.",
            store.applied_index,
        )
        yield gauge(
            "etcd_server_proposals_applied_total",
            "The total number of consensus proposals applied.",
            store.applied_index,
        )
        yield gauge(
            "etcd_server_proposals_pending", "The current number of pending proposals to commit.", 0
        )
        yield CounterMetricFamily(
            "etcd_server_proposals_failed", "The total number of failed proposals seen.", value=0
        )
        server_id = GaugeMetricFamily(
            "etcd_server_id",
            "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
            labels=["server_id"],
        )
        server_id.add_metric([f"{store.member_id:x}"], 1)
        yield server_id
        try:
            size = store.wal.disk_size() + (store.config.data_dir / "member.json").stat().st_size
        except OSError:
            size = 0
        yield gauge(
            "etcd_mvcc_db_total_size_in_bytes",
            "Total size of the underlying database physically allocated in bytes.",
            size,
        )
        yield gauge(
            "etcd_mvcc_db_total_size_in_use_in_bytes",
            "Total size of the underlying database logically in use in bytes.",
            min(size, space.size + 64),
        )
        yield gauge(
            "etcd_debugging_mvcc_keys_total",
            "Total number of keys.",
            len(space.keys) - len(space.dead),
        )
        yield gauge(
            "etcd_debugging_mvcc_current_revision", "The current revision of store.", space.revision
        )
        yield gauge(
            "etcd_debugging_mvcc_compact_revision",
            "The revision of the last compaction in store.",
            space.compacted,
        )
        yield gauge(
            "etcd_debugging_mvcc_watcher_total", "Total number of watchers.", len(store.hub)
        )
        if self.streams is not None:
            yield gauge(
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
                len(self.streams),
            )
        yield gauge(
            "etcd_debugging_lease_total",
            "The number of leases alive (clusterd; etcd has no such gauge).",
            len(store.lessor.leases),
        )
        yield gauge(
            "etcd_server_quota_backend_bytes",
            "Current backend storage quota size in bytes.",
            store.config.quota_bytes,
        )


class StoreMetrics:
    """The registry /metrics renders: the store's collector and the process's."""

    def __init__(self, store: Store, streams: set[object] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_StoreCollector(store, streams))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def render(self, accept: str) -> tuple[bytes, str]:
        encoder, kind = choose_encoder(accept)
        return encoder(self.registry), kind
