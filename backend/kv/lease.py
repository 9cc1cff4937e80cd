"""Provides leases: grant, renew, expiry and the keys attached to each lease."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field

from clustertui.backend.kv import errors

MAX_LEASE_TTL = 9_000_000_000
"""etcd's upper bound on a lease TTL, in seconds."""


def min_lease_ttl(heartbeat_ms: int, election_ms: int) -> int:
    """etcd's minimum TTL: 1.5 election timeouts, rounded up to whole seconds."""
    ticks = max(1, election_ms // max(1, heartbeat_ms))
    return max(1, math.ceil((3 * ticks) // 2 * heartbeat_ms / 1000))


@dataclass
class Lease:
    """One granted lease."""

    id: int
    ttl: int
    """The TTL the lease was granted with (after the minimum was applied)."""
    expiry: float = 0.0
    """``time.monotonic()`` at which it expires."""
    keys: set[bytes] = field(default_factory=set)

    def remaining(self) -> int:
        return max(0, math.ceil(self.expiry - time.monotonic()))


class Lessor:
    """Every live lease; expiry is checked by the server, which revokes what is due."""

    def __init__(self, min_ttl: int) -> None:
        self.min_ttl = min_ttl
        self.leases: dict[int, Lease] = {}

    def new_id(self) -> int:
        while True:
            lease_id = random.getrandbits(62) + 1
            if lease_id not in self.leases:
                return lease_id

    def check_grant(self, lease_id: int, ttl: int) -> None:
        if ttl > MAX_LEASE_TTL:
            raise errors.LeaseTTLTooLarge()
        if lease_id in self.leases:
            raise errors.LeaseExist()

    def grant(self, lease_id: int, ttl: int) -> Lease:
        """Grant (or, on recovery, re-grant) a lease; its clock starts now, as in etcd."""
        ttl = max(ttl, self.min_ttl)
        lease = Lease(lease_id, ttl, time.monotonic() + ttl)
        self.leases[lease_id] = lease
        return lease

    def revoke(self, lease_id: int) -> Lease:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            raise errors.LeaseNotFound()
        return lease

    def renew(self, lease_id: int) -> int:
        """Restart the lease's clock; returns its TTL, or 0 if there is no such lease."""
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        lease.expiry = time.monotonic() + lease.ttl
        return lease.ttl

    def attach(self, lease_id: int, key: bytes) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.keys.add(key)

    def detach(self, lease_id: int, key: bytes) -> None:
        lease = self.leases.get(lease_id)
        if lease is not None:
            lease.keys.discard(key)

    def expired(self) -> list[int]:
        now = time.monotonic()
        return [lease.id for lease in self.leases.values() if lease.expiry <= now]

    def restart_clocks(self) -> None:
        """After a restart every lease gets its full TTL again, as etcd does."""
        now = time.monotonic()
        for lease in self.leases.values():
            lease.expiry = now + lease.ttl
