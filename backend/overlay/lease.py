"""Provides ``SubnetManager``: acquires, keeps and re-acquires this machine's overlay subnet."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

from clustertui.backend import filemodes
from clustertui.backend.etcd import EtcdClient, EtcdError, typed_error
from clustertui.backend.fleet.tasks import wait_event
from clustertui.backend.fleet.validate import subnet_record_problem
from clustertui.backend.keys import prefix_end
from clustertui.backend.overlay.config import (
    DEFAULT_PREFIX,
    ConfigError,
    NetworkConfig,
    parse_config,
)

log = logging.getLogger("clusterd.overlay")

DEFAULT_TTL = 24 * 3600.0
DEFAULT_RENEW_MARGIN = 3600.0
CANDIDATES = 100
SUBNET_ENV = "subnet.env"
# Pauses before trying again after a bad config or an unreachable store.
RETRY_MIN = 0.5
RETRY_MAX = 10.0


class OutOfSubnets(Exception):
    """Every subnet between SubnetMin and SubnetMax is leased or reserved."""


@dataclass(frozen=True)
class Lease:
    """A subnet this machine holds (``lease_id`` 0: a reservation made for us, no TTL)."""

    subnet: ipaddress.IPv4Network
    public_ip: str
    key: bytes
    lease_id: int
    ttl: int
    revision: int
    config: NetworkConfig


def subnet_key(prefix: str, subnet: ipaddress.IPv4Network) -> bytes:
    """``<prefix>/subnets/10.1.15.0-24``, flannel's key for a subnet."""
    return f"{prefix}/subnets/{subnet.network_address}-{subnet.prefixlen}".encode()


def parse_subnet_key(key: bytes) -> ipaddress.IPv4Network | None:
    name = key.rsplit(b"/", 1)[-1].decode(errors="replace")
    address, _, length = name.partition("-")
    try:
        return ipaddress.IPv4Network(f"{address}/{length}")
    except ValueError:
        return None


def read_subnet_env(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except (FileNotFoundError, UnicodeDecodeError):
        return {}
    values = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep:
            values[name.strip()] = value.strip()
    return values


def write_subnet_env(path: Path, lease: Lease, *, ip_masq: bool, mtu: int | None = None) -> None:
    """Write flannel's ``subnet.env`` atomically: readers see the old file or the new one.

    ``mtu``: the overlay's MTU when the data plane knows it (underlay MTU less the backend's
    overhead); else the config's, for a 1500-byte underlay.
    """
    first = lease.subnet.network_address + 1
    text = (
        f"FLANNEL_NETWORK={lease.config.network}\n"
        f"FLANNEL_SUBNET={first}/{lease.subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu or lease.config.mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}\n"
    )
    # flanneld's modes: its directory 0755 when it makes one, the file 0644 whatever the
    # umask (every service that joins the overlay reads it). A node's data dir is made 0711.
    filemodes.make_dirs(path.parent, filemodes.NODE_DIR)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = filemodes.open_new(tmp, filemodes.PUBLIC_FILE)
    os.fchmod(fd, filemodes.PUBLIC_FILE)
    with open(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SubnetManager:
    """Keeps one subnet leased for ``public_ip``, as flanneld does, until ``stop`` is set.

    The layout and the order of choices are flannel's (its etcd subnet manager):

    1. an existing lease whose PublicIP is ours is reused (a restart keeps its subnet);
    2. else the subnet in our previous ``subnet.env``, when it is free and still valid;
    3. else a random pick among up to 100 free subnets between SubnetMin and SubnetMax,
       created with a "create if absent" transaction under a TTL lease, retried on lost races.

    A key under ``subnets/`` that has no lease is a reservation and is never handed out.
    """

    def __init__(
        self,
        client: EtcdClient,
        public_ip: str,
        data_dir: Path,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl: float = DEFAULT_TTL,
        renew_margin: float = DEFAULT_RENEW_MARGIN,
        ip_masq: bool = False,
        backend_data: dict[str, Any] | None = None,
        on_change: Callable[[Lease | None, str | None], None] | None = None,
    ) -> None:
        self.client = client
        self.public_ip = str(ipaddress.IPv4Address(public_ip))
        self.subnet_env = Path(data_dir) / SUBNET_ENV
        self.prefix = prefix.rstrip("/")
        self.ttl = ttl
        self.renew_margin = renew_margin
        self.ip_masq = ip_masq
        self.backend_data = backend_data or {}
        self.mtu: int | None = None
        """FLANNEL_MTU when the data plane knows the underlay's MTU (else the config's)."""
        self.lease: Lease | None = None
        """The subnet held now, or None while acquiring."""
        self.ready = asyncio.Event()
        """Set once a subnet is held and subnet.env written."""
        self.last_error: str | None = None
        """Why the last attempt failed, for a status line; None once a subnet is held."""
        self.on_change = on_change
        """Called with (lease, error) whenever either changes: to publish the node's state."""
        self._rng = random.Random()

    def _set_state(self, lease: Lease | None, error: str | None) -> None:
        self.lease = lease
        self.last_error = error
        if lease is None:
            self.ready.clear()
        else:
            self.ready.set()
        if self.on_change is not None:
            self.on_change(lease, error)

    @property
    def config_key(self) -> bytes:
        return f"{self.prefix}/config".encode()

    @property
    def subnets_prefix(self) -> bytes:
        return f"{self.prefix}/subnets/".encode()

    async def read_config(self) -> NetworkConfig:
        found = await self.client.get(self.config_key)
        if found is None:
            raise ConfigError(
                "config", f"no network config at {self.config_key.decode()}: put one there first"
            )
        return parse_config(found.value)

    def _value(self, config: NetworkConfig) -> bytes:
        return json.dumps(
            {
                "PublicIP": self.public_ip,
                "BackendType": config.backend_type,
                "BackendData": self.backend_data,
            },
            separators=(",", ":"),
        ).encode()

    async def _list(self) -> list[Any]:
        return list(await self.client.get_prefix(self.subnets_prefix))

    async def acquire(self) -> Lease:
        """Take a subnet for this machine (in flannel's order: see the class)."""
        config = await self.read_config()
        taken = await self._list()
        previous = self._previous_subnet(config)
        granted = None
        try:
            while True:
                mine = self._find_mine(taken, config)
                if mine is not None:
                    lease, taken = await self._reuse(mine, config)
                else:
                    busy = {parse_subnet_key(kv.key) for kv in taken}
                    if previous is not None and previous not in busy:
                        subnet = previous
                    else:
                        subnet = self._pick(config, busy)
                    previous = None
                    if granted is None:
                        granted = await self.client.lease(max(1, round(self.ttl)))
                    lease, taken = await self._create(subnet, config, granted.id, granted.ttl)
                    if lease is not None:
                        granted = None
                if lease is not None:
                    return lease
                log.debug("lost a race for a subnet, looking again")
        finally:
            if granted is not None:
                with contextlib.suppress(EtcdError):
                    await self.client.revoke_lease(granted.id)

    async def _put_if(
        self, compare: rpc.Compare, key: bytes, value: bytes, lease_id: int
    ) -> tuple[int | None, list[Any]]:
        """Put ``key`` if ``compare`` holds: (revision of the put, []) or (None, the subnets).

        On failure the same transaction reads the subnets back, which saves a round trip
        per lost race when many machines start at once.
        """
        subnets = self.subnets_prefix
        request = rpc.TxnRequest(
            compare=[compare],
            success=[
                rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=value, lease=lease_id))
            ],
            failure=[
                rpc.RequestOp(
                    request_range=rpc.RangeRequest(key=subnets, range_end=prefix_end(subnets))
                )
            ],
        )
        await self.client.connect()
        try:
            response = await self.client.kvstub.Txn(
                request, timeout=self.client.config.timeout, metadata=self.client.metadata
            )
        except grpc.RpcError as error:
            raise typed_error(error) from error
        if response.succeeded:
            return response.header.revision, []
        return None, list(response.responses[0].response_range.kvs)

    def _find_mine(self, taken: list[Any], config: NetworkConfig) -> Any | None:
        for kv in taken:
            subnet = parse_subnet_key(kv.key)
            if subnet is None or subnet.prefixlen != config.subnet_len:
                continue
            if not subnet.subnet_of(config.network):
                continue
            try:
                value = json.loads(kv.value)
            except ValueError:
                continue
            # A record that fails validation is never taken for ours, whatever it names.
            if subnet_record_problem(value):
                log.warning("ignoring invalid subnet record %r", kv.key.decode(errors="replace"))
                continue
            if value["PublicIP"] == self.public_ip:
                return kv
        return None

    async def _reuse(self, kv: Any, config: NetworkConfig) -> tuple[Lease | None, list[Any]]:
        subnet = parse_subnet_key(kv.key)
        assert subnet is not None
        if kv.lease == 0:
            log.info("using %s, reserved for %s", subnet, self.public_ip)
            return Lease(subnet, self.public_ip, kv.key, 0, 0, kv.mod_revision, config), []
        # Move the key to a fresh lease of our TTL; the compare makes sure it is still ours.
        granted = await self.client.lease(max(1, round(self.ttl)))
        same = rpc.Compare(
            key=kv.key,
            target=rpc.Compare.MOD,
            result=rpc.Compare.EQUAL,
            mod_revision=kv.mod_revision,
        )
        revision, taken = await self._put_if(same, kv.key, self._value(config), granted.id)
        if revision is None:
            await self.client.revoke_lease(granted.id)
            return None, taken
        with contextlib.suppress(EtcdError):
            await self.client.revoke_lease(kv.lease)
        log.info("reusing %s, already leased to %s", subnet, self.public_ip)
        lease = Lease(subnet, self.public_ip, kv.key, granted.id, granted.ttl, revision, config)
        return lease, []

    def _previous_subnet(self, config: NetworkConfig) -> ipaddress.IPv4Network | None:
        value = read_subnet_env(self.subnet_env).get("FLANNEL_SUBNET")
        if not value:
            return None
        try:
            subnet = ipaddress.IPv4Network(value, strict=False)
        except ValueError:
            return None
        return subnet if config.allows(subnet) else None

    def _pick(
        self, config: NetworkConfig, busy: set[ipaddress.IPv4Network | None]
    ) -> ipaddress.IPv4Network:
        candidates: list[ipaddress.IPv4Network] = []
        index = config.index_of(config.subnet_min)
        last = config.index_of(config.subnet_max)
        while index <= last and len(candidates) < CANDIDATES:
            subnet = config.subnet_at(index)
            if subnet not in busy:
                candidates.append(subnet)
            index += 1
        if not candidates:
            raise OutOfSubnets(
                f"out of subnets: every /{config.subnet_len} from {config.subnet_min} to "
                f"{config.subnet_max} in {config.network} is leased or reserved"
            )
        return self._rng.choice(candidates)

    async def _create(
        self, subnet: ipaddress.IPv4Network, config: NetworkConfig, lease_id: int, ttl: int
    ) -> tuple[Lease | None, list[Any]]:
        """Create ``subnet``'s key if nobody holds it (etcd: Version == 0)."""
        key = subnet_key(self.prefix, subnet)
        absent = rpc.Compare(
            key=key, target=rpc.Compare.VERSION, result=rpc.Compare.EQUAL, version=0
        )
        revision, taken = await self._put_if(absent, key, self._value(config), lease_id)
        if revision is None:
            return None, taken
        log.info("leased %s for %s", subnet, self.public_ip)
        return Lease(subnet, self.public_ip, key, lease_id, ttl, revision, config), []

    # -- keeping it ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire, write subnet.env, renew; acquire again on loss; retry on errors.

        Returns when ``stop`` is set. The lease is left in place, as flanneld leaves it,
        so a restart within the TTL keeps the subnet.
        """
        delay = RETRY_MIN
        while not stop.is_set():
            try:
                lease = await self.acquire()
                write_subnet_env(self.subnet_env, lease, ip_masq=self.ip_masq, mtu=self.mtu)
            except (ConfigError, OutOfSubnets, OSError) as error:
                self._set_state(None, str(error))
                log.error("cannot lease a subnet: %s (trying again in %.1fs)", error, delay)
            except EtcdError as error:
                self._set_state(None, str(error))
                log.warning("store unavailable: %s (trying again in %.1fs)", error, delay)
            else:
                delay = RETRY_MIN
                self._set_state(lease, None)
                reason = await self._hold(lease, stop)
                if reason is None:
                    return
                self._set_state(None, f"lost {lease.subnet}: {reason}")
                log.warning("lost %s: %s; acquiring a subnet again", lease.subnet, reason)
                continue
            await wait_event(stop, delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _hold(self, lease: Lease, stop: asyncio.Event) -> str | None:
        """Keep ``lease`` until it is lost (the reason) or ``stop`` is set (None)."""
        stopped = asyncio.create_task(stop.wait())
        renewing = asyncio.create_task(self._renew(lease))
        watching = asyncio.create_task(self._watch(lease))
        tasks = {stopped, renewing, watching}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if stopped in done:
            return None
        task = renewing if renewing in done else watching
        error = task.exception()
        if isinstance(error, EtcdError):
            return f"the store failed while keeping it ({error})"
        return task.result()

    async def _renew(self, lease: Lease) -> str:
        if lease.lease_id == 0:
            # A reservation has no TTL: nothing to renew, it stays until an admin removes it.
            await asyncio.Event().wait()
        ttl = float(lease.ttl)
        interval = ttl - self.renew_margin if ttl > self.renew_margin else ttl / 3
        expires = time.monotonic() + ttl
        while True:
            await asyncio.sleep(max(0.0, min(interval, expires - time.monotonic() - 0.5)))
            try:
                reply = await self.client.refresh_lease(lease.lease_id)
            except EtcdError as error:
                if time.monotonic() >= expires:
                    return f"could not renew before the lease expired ({error})"
                log.warning("renewing %s failed: %s; retrying", lease.subnet, error)
                interval = min(interval, 1.0)
                continue
            if reply is None or reply.TTL <= 0:
                return "its lease expired or was revoked"
            expires = time.monotonic() + reply.TTL
            interval = (
                reply.TTL - self.renew_margin if reply.TTL > self.renew_margin else reply.TTL / 3
            )
            log.debug("renewed %s for %ss", lease.subnet, reply.TTL)

    async def _watch(self, lease: Lease) -> str:
        revision = lease.revision + 1
        while True:
            try:
                async for batch in self.client.watch_batches(lease.key, start_revision=revision):
                    revision = batch.revision + 1
                    for event in batch.events:
                        if event.type == rpc.Event.DELETE:
                            return "its key was deleted"
                        owner = _public_ip(event.kv.value)
                        if owner != self.public_ip:
                            return f"its key now names {owner}"
            except EtcdError as error:
                log.warning("watching %s failed: %s; watching again", lease.subnet, error)
                await asyncio.sleep(1.0)
                found = await self.client.get(lease.key)
                if found is None:
                    return "its key was deleted"
                revision = found.mod_revision + 1


def _public_ip(value: bytes) -> str | None:
    try:
        owner = json.loads(value).get("PublicIP")
    except (ValueError, AttributeError):
        return None
    return None if owner is None else str(owner)
