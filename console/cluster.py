"""Provides the cluster panes' live model: fleet's and flannel's keys, kept by watches."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.etcd import DELETE, EtcdClient, EtcdError, RevisionCompacted
from backend.fleet.registry import DEFAULT_PREFIX, ClusterState, Registry
from backend.fleet.validate import subnet_record_problem
from backend.keys import prefix_end
from backend.overlay.config import ConfigError, NetworkConfig, parse_config
from backend.overlay.lease import parse_subnet_key
from backend.overlay.routes import kernel_routes

NETWORK_PREFIX = "/coreos.com/network/"
LEASE_POLL_SECONDS = 1.0
"""How often machine presence and subnet expiries are read again."""


@dataclass
class Subnet:
    """``subnets/<subnet>``: who holds it, and when its lease runs out (None: a reservation)."""

    network: ipaddress.IPv4Network
    public_ip: str
    backend: str
    machine_id: str
    lease: int
    expires_at: float | None = None
    """Clock time the lease runs out, from its last reading; None while unread."""
    problem: str = ""
    """Why the record fails validation ("" when it is valid)."""
    vtep_mac: str = ""
    """BackendData.VtepMAC: the vxlan device's MAC on the lease's host."""


@dataclass
class MachineLease:
    """A machine's presence lease as last read: seconds left of how many granted."""

    ttl: int
    granted: int
    read_at: float


@dataclass
class ClusterModel:
    """Fleet's and flannel's keys as the watches last delivered them, plus lease readings."""

    prefix: str = DEFAULT_PREFIX
    network_prefix: str = NETWORK_PREFIX
    clock: Callable[[], float] = time.time
    """The wall clock; tests and screenshots pin it."""
    fleet: ClusterState = field(default_factory=ClusterState)
    network_raw: bytes | None = None
    subnets: dict[str, Subnet] = field(default_factory=dict)
    machine_leases: dict[str, int] = field(default_factory=dict)
    """Lease ID of each machine's record."""
    routes: dict[ipaddress.IPv4Network, str] = field(default_factory=dict)
    """This host's routes (destination -> device), read with the leases: the Subnets pane
    says which subnets the host the console runs on routes."""
    presence: dict[str, MachineLease] = field(default_factory=dict)
    revision: int = 0
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = "connecting"
    """"connecting", "live" or "reconnecting": whether the watches are up."""

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
        self.subnets.clear()
        self.machine_leases.clear()

    def apply(self, registry: Registry, kvs_or_events: list[Any], *, events: bool) -> None:
        """Fold a listing's key-values, or a watch batch's events, into the model."""
        fleet_prefix = self.prefix.encode()
        units = self.fleet.raw_units
        for item in kvs_or_events:
            kv = item.kv if events else item
            deleted = events and item.type == DELETE
            key: bytes = kv.key
            if key.startswith(fleet_prefix):
                rel = key[len(fleet_prefix) :].decode(errors="replace")
                if deleted:
                    self._forget(rel)
                else:
                    registry._absorb(self.fleet, units, rel, kv.value)
                    parts = rel.split("/")
                    if parts[0] == "machines" and len(parts) == 3:
                        self.machine_leases[parts[1]] = kv.lease
            else:
                self._network_key(key, kv, deleted)
        jobs = self.fleet.jobs
        for job in jobs.values():
            if job.unit_hash and (job.unit is None or job.unit.raw != units.get(job.unit_hash)):
                job.unit = registry.parsed(job.unit_hash, units.get(job.unit_hash))

    def _forget(self, rel: str) -> None:
        parts = rel.split("/")
        fleet = self.fleet
        if parts[0] == "job" and len(parts) == 3:
            job = fleet.jobs.get(parts[1])
            if job is None:
                return
            if parts[2] == "object":
                del fleet.jobs[parts[1]]
            elif parts[2] == "target":
                job.target = ""
            elif parts[2] == "target-state":
                job.target_state = "inactive"
            elif parts[2] == "reason":
                job.reason = ""
        elif parts[0] == "states" and len(parts) == 3:
            states = fleet.states.get(parts[1], {})
            states.pop(parts[2], None)
            if not states:
                fleet.states.pop(parts[1], None)
        elif parts[0] == "machines" and len(parts) == 3:
            fleet.machines.pop(parts[1], None)
            self.machine_leases.pop(parts[1], None)
            self.presence.pop(parts[1], None)
        elif parts[0] == "unit" and len(parts) == 2:
            fleet.raw_units.pop(parts[1], None)
        elif rel == "lease/engine-leader":
            fleet.leader = ""

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
            return
        network = parse_subnet_key(key)
        if network is None:
            return
        try:
            value = json.loads(kv.value)
        except ValueError:
            value = None
        value = value if isinstance(value, dict) else {}
        data = value.get("BackendData")
        data = data if isinstance(data, dict) else {}
        old = self.subnets.get(name)
        subnet = Subnet(
            network=network,
            public_ip=str(value.get("PublicIP", "")),
            backend=str(value.get("BackendType", "")),
            machine_id=str(data.get("MachineID", "")),
            lease=kv.lease,
            problem=subnet_record_problem(value),
            vtep_mac=str(data.get("VtepMAC", "")),
        )
        if old is not None and old.lease == kv.lease:
            subnet.expires_at = old.expires_at
        self.subnets[name] = subnet

    def machine_of_subnet(self, subnet: Subnet) -> str:
        if subnet.machine_id:
            return subnet.machine_id
        if subnet.problem:
            return ""
        owners = [m.id for m in self.fleet.machines.values() if m.public_ip == subnet.public_ip]
        return owners[0] if len(owners) == 1 else ""

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
                await asyncio.sleep(delay)
                # At most a second behind a store that is back (the panes must catch up fast).
                delay = min(delay * 2, 1.0)
                continue

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
