"""Provides self-fencing: a presence lease that knows how long it can still be trusted.

An agent owns its non-global units only while its presence lease is alive. The store ends
the lease ``TTL`` seconds after the last renewal it received; the agent cannot see that
moment, but it knows when it *sent* the last renewal the store acknowledged, which is no
later. So, by the agent's own clock, the lease is alive until ``renewed + TTL`` at the
latest (given clocks whose rates differ by less than the margin, the assumption etcd's
leases make). The agent stops its non-global units from ``renewed + TTL - margin`` on and is
done before ``renewed + TTL``: only then can the engine place them elsewhere.
"""

from __future__ import annotations

import asyncio
import time

from clustertui.backend.etcd import EtcdClient, EtcdError
from clustertui.backend.fleet.registry import KeptLease
from clustertui.backend.fleet.tasks import raise_if_cancelling

DEFAULT_MARGIN = 0.3
"""The part of the TTL kept for stopping units: they are stopped after 0.7 TTL without renewal."""
SAFETY = 0.1
"""Seconds a fencing stop leaves between its SIGKILL and the lease's end by the local clock."""


def parse_margin(text: str) -> float:
    """``0.3`` or ``30%``: a fraction of the TTL in [0, 0.9]; 0 turns fencing off."""
    text = text.strip()
    value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    if not 0 <= value <= 0.9:
        raise ValueError("--fence-margin must be between 0 and 0.9 of the TTL (0 turns it off)")
    return value


def clock(at: float) -> str:
    """A wall time as HH:MM:SS (local time, as the journal shows it)."""
    return time.strftime("%H:%M:%S", time.localtime(at))


class FencedLease(KeptLease):
    """A kept lease that records when it was last renewed, and so when it must be given up.

    Renewals go out every sixth of the TTL, each waiting at most that long for its answer,
    so a store that is slow once does not cost a fence.
    """

    def __init__(self, client: EtcdClient, ttl: int, margin: float = DEFAULT_MARGIN) -> None:
        super().__init__(client, ttl)
        self.margin = margin
        self.renewed = 0.0
        """time.monotonic() when the last acknowledged renewal (or the grant) was sent."""
        self.renewed_wall = 0.0
        """The same moment by the wall clock, for people."""
        self.granted = 0
        """The lease's ID, kept after :meth:`close` (which zeroes ``id``): a lease given up
        after a store error still covers the units until it ends, and must still fence."""

    @property
    def expires(self) -> float:
        """The latest moment (monotonic) the lease can still be alive in the store."""
        return self.renewed + self.ttl

    @property
    def fence_at(self) -> float:
        """When the units must start stopping (monotonic): TTL - margin after renewal."""
        return self.expires - self.margin * self.ttl

    def _mark(self, sent: float, sent_wall: float) -> None:
        if sent > self.renewed:
            self.renewed, self.renewed_wall = sent, sent_wall

    async def grant(self) -> int:
        sent, sent_wall = time.monotonic(), time.time()
        lease = await self.client.lease(self.ttl)
        self.id = self.granted = lease.id
        self._mark(sent, sent_wall)
        self.lost.clear()
        self._task = asyncio.create_task(self._refresh(), name=f"lease-{self.id}")
        return self.id

    async def _refresh(self) -> None:
        interval = max(0.1, self.ttl / 6)
        while True:
            await asyncio.sleep(max(0.0, self.renewed + interval - time.monotonic()))
            sent, sent_wall = time.monotonic(), time.time()
            try:
                reply = await asyncio.wait_for(self.client.refresh_lease(self.id), interval)
            except (EtcdError, TimeoutError, OSError):
                # Not answered in time: try again at once, until the fence decides.
                raise_if_cancelling()
                await asyncio.sleep(min(0.1, interval))
                continue
            if reply is None or reply.TTL <= 0:
                self.lost.set()
                return
            self._mark(sent, sent_wall)
