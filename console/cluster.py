"""Provides the cluster panes' live model: fleet's and flannel's keys, kept by watches."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import grpc

from clustertui.backend.etcd import DELETE, EtcdClient, EtcdError, RevisionCompacted
from clustertui.backend.fleet.model import ClusterState, Subnet
from clustertui.backend.fleet.registry import DEFAULT_PREFIX, Registry
from clustertui.backend.keys import prefix_end
from clustertui.backend.overlay.config import DEFAULT_PREFIX as OVERLAY_PREFIX
from clustertui.backend.overlay.config import ConfigError, NetworkConfig, parse_config
from clustertui.backend.overlay.routes import kernel_routes

__all__ = ["ClusterFeed", "ClusterModel", "MachineLease", "Subnet"]

NETWORK_PREFIX = OVERLAY_PREFIX + "/"

FeedState = Literal["connecting", "live", "reconnecting"]
"""Whether the watches are up."""


@dataclass
class MachineLease:
    """A machine's presence lease as last read: seconds left of how many granted."""

    ttl: int
    granted: int
    read_at: float


@dataclass
class ClusterModel:
    """The console's side of fleet's model: the :class:`ClusterState` the watches keep,
    the network config, and what the console reads besides (leases, routes)."""

    prefix: str = DEFAULT_PREFIX
    network_prefix: str = NETWORK_PREFIX
    clock: Callable[[], float] = time.time
    """The wall clock; tests and screenshots pin it."""
    fleet: ClusterState = field(default_factory=ClusterState)
    network_raw: bytes | None = None
    routes: dict[ipaddress.IPv4Network, str] = field(default_factory=dict)
    """This host's routes (destination -> device), read with the leases: the Subnets pane
    says which subnets the host the console runs on routes."""
    presence: dict[str, MachineLease] = field(default_factory=dict)
    revision: int = 0
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    state: FeedState = "connecting"

    @property
    def subnets(self) -> dict[str, Subnet]:
        return self.fleet.subnets

    @property
    def machine_leases(self) -> dict[str, int]:
        """Lease ID of each machine's record."""
        return self.fleet.machine_leases

    @property
    def network(self) -> NetworkConfig | None:
        if self.network_raw is None:
            return None
        try:
            return parse_config(self.network_raw)
        except (ConfigError, ValueError):
            return None

    @property
    def network_error(self) -> str:
        if self.network_raw is None:
            return "no network config"
        try:
            parse_config(self.network_raw)
        except (ConfigError, ValueError) as error:
            return f"the network config is invalid: {error}"
        return ""

    def reset(self) -> None:
        self.fleet = ClusterState()
        self.network_raw = None

    def apply(self, registry: Registry, kvs_or_events: list[Any], *, events: bool) -> None:
        """Fold a listing's key-values, or a watch batch's events, into the model."""
        fleet_prefix = self.prefix.encode()
        for item in kvs_or_events:
            kv = item.kv if events else item
            deleted = events and item.type == DELETE
            key: bytes = kv.key
            if key.startswith(fleet_prefix):
                rel = key[len(fleet_prefix) :].decode(errors="replace")
                if deleted:
                    self.fleet.forget(rel)
                    parts = rel.split("/")
                    if parts[0] == "machines" and len(parts) == 3:
                        self.presence.pop(parts[1], None)
                else:
                    self.fleet.absorb(rel, kv.value, kv.lease)
            else:
                self._network_key(key, kv, deleted)
        registry.attach_units(self.fleet)

    def _network_key(self, key: bytes, kv: Any, deleted: bool) -> None:
        rel = key[len(self.network_prefix.encode()) :]
        if rel == b"config":
            self.network_raw = None if deleted else bytes(kv.value)
            return
        if not rel.startswith(b"subnets/"):
            return
        name = rel[len(b"subnets/") :].decode(errors="replace")
        if deleted:
            self.subnets.pop(name, None)
        else:
            self.fleet.absorb_subnet(name, kv.value, kv.lease)

    def machine_of_subnet(self, subnet: Subnet) -> str:
        return self.fleet.owner(subnet)

    def machine_gone(self, machine_id: str) -> bool:
        """True once the agent stopped renewing: its record stays until the lease runs out."""
        reading = self.presence.get(machine_id)
        if reading is None or reading.granted <= 0:
            return False
        left = reading.ttl - (self.clock() - reading.read_at)
        # A live agent renews every third of its TTL; two missed renewals mean it is gone.
        return left < reading.granted / 3

    def free_subnets(self) -> tuple[int, int] | None:
        """(free, total) subnets between SubnetMin and SubnetMax."""
        config = self.network
        if config is None:
            return None
        total = config.index_of(config.subnet_max) - config.index_of(config.subnet_min) + 1
        taken = sum(1 for s in self.subnets.values() if config.allows(s.network))
        return total - taken, total


class ClusterFeed:
    """Lists fleet's and flannel's keys, then watches both, resuming from the last revision.

    Batches queue in :attr:`pending` until the UI folds them in with :meth:`drain`, so a
    burst of events costs one repaint.
    """

    def __init__(self, client: EtcdClient, model: ClusterModel) -> None:
        self.client = client
        self.model = model
        self.registry = Registry(client, model.prefix)
        self.pending: list[list[Any]] = []
        self.revisions: dict[bytes, int] = {}
        """The newest revision each watch delivered: each resumes after its own."""

    def _ranges(self) -> list[bytes]:
        return [self.model.prefix.encode(), self.model.network_prefix.encode()]

    async def load(self) -> None:
        """List both key ranges at one revision and start the model from them."""
        revision = 0
        kvs: list[Any] = []
        for prefix in self._ranges():
            response = await self.registry.read_range(prefix, prefix_end(prefix), revision=revision)
            revision = revision or response.header.revision
            kvs.extend(response.kvs)
        self.model.reset()
        self.model.apply(self.registry, kvs, events=False)
        self.model.revision = revision
        self.revisions = dict.fromkeys(self._ranges(), revision)
        self.model.loaded.set()

    async def run(self) -> None:
        """Load, then watch forever; drops back off and resume, compaction reloads."""
        delay = 0.2
        while True:
            try:
                if not self.model.loaded.is_set():
                    await self.load()
                    self.pending.append([])
                self.model.state = "live"
                await self._watch_all()
            except RevisionCompacted:
                self.model.loaded.clear()
                self.pending.clear()
                continue
            except (EtcdError, OSError):
                self.model.state = "reconnecting"
                await self._back_off(delay)
                # At most a second behind a store that is back (the panes must catch up fast).
                delay = min(delay * 2, 1.0)
                continue

    async def _back_off(self, delay: float) -> None:
        """Wait ``delay`` before watching again, or less: until the channel is connected.

        A sleep alone adds its length to the channel's own reconnect wait (the channel
        dials on its backoff, and a watch started before fails at once): after a store
        restart, the panes were up to 4 s behind, past the 2 s they must catch up in.
        """
        channel = getattr(self.client, "channel", None)
        if channel is None or channel.get_state() == grpc.ChannelConnectivity.READY:
            # Connected, yet the watch failed: not a dial to wait for.
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(channel.channel_ready(), delay)

    async def _watch_all(self) -> None:
        queue: asyncio.Queue[tuple[bytes, int, list[Any]] | BaseException] = asyncio.Queue()

        async def one(prefix: bytes) -> None:
            try:
                async for batch in self.client.watch_batches(
                    prefix,
                    prefix_end(prefix),
                    start_revision=self.revisions[prefix] + 1,
                    progress_notify=True,
                ):
                    await queue.put((prefix, batch.revision, list(batch.events)))
                # A stream the server ended (the bundled store shutting down) is a drop too.
                await queue.put(EtcdError("the watch stream ended"))
            except BaseException as error:
                await queue.put(error)

        tasks = [asyncio.create_task(one(prefix)) for prefix in self._ranges()]
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                prefix, revision, events = item
                if events:
                    self.pending.append(events)
                self.revisions[prefix] = max(self.revisions[prefix], revision)
                self.model.revision = max(self.model.revision, revision)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(BaseException):
                    await task

    def drain(self) -> bool:
        """Fold the queued batches into the model; True when anything changed."""
        if not self.pending:
            return False
        batches, self.pending = self.pending, []
        for events in batches:
            self.model.apply(self.registry, events, events=True)
        return True

    async def read_leases(self) -> None:
        """Read machine presence leases and subnet lease expiries once.

        A lease that ran out between the listing and the reading is not an error: its key
        is about to go, and the watch will say so.
        """
        model = self.model
        now = model.clock()
        model.routes = await asyncio.to_thread(kernel_routes)
        for machine_id, lease in list(model.machine_leases.items()):
            if not lease:
                continue
            with contextlib.suppress(Exception):
                info = await self.client.get_lease_info(lease, keys=False)
                model.presence[machine_id] = MachineLease(info.TTL, info.grantedTTL, now)
        for subnet in list(model.subnets.values()):
            if not subnet.lease:
                continue
            with contextlib.suppress(Exception):
                info = await self.client.get_lease_info(subnet.lease, keys=False)
                subnet.expires_at = now + info.TTL if info.TTL > 0 else now
