"""Counters the hot paths keep for /metrics: plain integers, no locks, read when scraped."""

from __future__ import annotations

import bisect

ETCD_DISK_BUCKETS = tuple(0.001 * 2**i for i in range(14))
"""etcd's buckets for WAL fsync and backend commit durations: 1 ms doubling to 8.192 s."""


class Histogram:
    """Observations into fixed buckets; written by one thread at a time (the WAL's flush)."""

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: tuple[float, ...] = ETCD_DISK_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.count += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus's ``le`` buckets, cumulative, ending with +Inf."""
        out = []
        total = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            total += count
            out.append((repr(bound), total))
        out.append(("+Inf", self.count))
        return out
