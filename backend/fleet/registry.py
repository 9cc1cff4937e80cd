"""Provides typed access to fleet's key layout: units, jobs, states, machines and the leader."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from typing import Any

from aetcd import rpc

from clustertui.backend.etcd import EtcdClient, EtcdError, typed_error
from clustertui.backend.fleet.model import (
    TARGET_STATES,
    ClusterState,
    CurrentState,
    Job,
    Machine,
    TargetState,
    UnitState,
    current_state,
)
from clustertui.backend.fleet.tasks import raise_if_cancelling
from clustertui.backend.fleet.unitfile import UnitFile, parse, unit_hash
from clustertui.backend.keys import prefix_end

# The records live in the model; they are named here too, where most code has found them.
__all__ = [
    "DEFAULT_PREFIX",
    "MAX_TXN_OPS",
    "SECTIONS",
    "TARGET_STATES",
    "ClusterState",
    "CurrentState",
    "Job",
    "KeptLease",
    "Machine",
    "Registry",
    "RegistryError",
    "TargetState",
    "UnitExists",
    "UnitNotFound",
    "UnitState",
    "current_state",
]

DEFAULT_PREFIX = "/_coreos.com/fleet/"
# etcd refuses transactions of more than 128 operations by default.
MAX_TXN_OPS = 128
SECTIONS = ("job", "unit", "machines", "states", "lease")


class RegistryError(Exception):
    """A registry operation was refused; the message says why in a sysadmin's words."""


class UnitExists(RegistryError):
    """A unit of that name is already in the registry with other contents."""


class UnitNotFound(RegistryError):
    """No unit of that name is in the registry."""


def _decode(value: bytes) -> Any:
    try:
        return json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return None


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class Registry:
    """Reads and writes fleet's keys under ``prefix`` through one store client."""

    def __init__(self, client: EtcdClient, prefix: str = DEFAULT_PREFIX) -> None:
        self.client = client
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._parsed: dict[str, UnitFile] = {}

    def key(self, *parts: str) -> bytes:
        return (self.prefix + "/".join(parts)).encode()

    @property
    def leader_key(self) -> bytes:
        return self.key("lease", "engine-leader")

    async def read_range(self, key: bytes, end: bytes | None = None, **kwargs: Any) -> Any:
        """A raw Range of ``[key, end)`` (``RangeResponse``), for reads the typed ones lack."""
        await self.client.connect()
        request = rpc.RangeRequest(key=key, range_end=end or b"", **kwargs)
        try:
            return await self.client.kvstub.Range(
                request, timeout=self.client._timeout, metadata=self.client.metadata
            )
        except Exception as error:
            raise typed_error(error) from error

    async def txn(
        self,
        compare: Iterable[rpc.Compare] = (),
        success: Iterable[rpc.RequestOp] = (),
        failure: Iterable[rpc.RequestOp] = (),
    ) -> Any:
        await self.client.connect()
        request = rpc.TxnRequest(
            compare=list(compare), success=list(success), failure=list(failure)
        )
        try:
            return await self.client.kvstub.Txn(
                request, timeout=self.client._timeout, metadata=self.client.metadata
            )
        except Exception as error:
            raise typed_error(error) from error

    def put_op(self, key: bytes, value: Any, lease: int = 0) -> rpc.RequestOp:
        return rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=_encode(value), lease=lease))

    def delete_op(self, key: bytes, prefix: bool = False) -> rpc.RequestOp:
        end = prefix_end(key) if prefix else b""
        return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key, range_end=end))

    async def snapshot(self, sections: Iterable[str] = SECTIONS) -> ClusterState:
        """Read and parse the scheduler key space (or some of its sections) at one revision."""
        state = ClusterState()
        for section in sections:
            base = self.key(section) + b"/"
            response = await self.read_range(base, prefix_end(base), revision=state.revision)
            state.revision = state.revision or response.header.revision
            for kv in response.kvs:
                state.absorb(self.relative(kv.key), kv.value, kv.lease)
        state.jobs = {name: job for name, job in state.jobs.items() if job.unit_hash}
        self.attach_units(state)
        return state

    def relative(self, key: bytes) -> str:
        """A fleet key below the prefix (``job/x.service/object``)."""
        return key.decode(errors="replace")[len(self.prefix) :]

    def attach_units(self, state: ClusterState) -> None:
        """Give each job of ``state`` its parsed unit file, when its text changed."""
        units = state.raw_units
        for job in state.jobs.values():
            if job.unit_hash and (job.unit is None or job.unit.raw != units.get(job.unit_hash)):
                job.unit = self.parsed(job.unit_hash, units.get(job.unit_hash))

    def parsed(self, digest: str, raw: str | None) -> UnitFile | None:
        """The parsed unit for a hash, cached: thousands of jobs often share one text."""
        if raw is None:
            return None
        unit = self._parsed.get(digest)
        if unit is None:
            try:
                unit = parse(raw)
            except ValueError:
                return None
            if len(self._parsed) > 100_000:
                self._parsed.clear()
            self._parsed[digest] = unit
        return unit

    async def unit_text(self, unit_hash_hex: str) -> str | None:
        response = await self.read_range(self.key("unit", unit_hash_hex))
        if not response.kvs:
            return None
        data = _decode(response.kvs[0].value)
        return str(data.get("Raw", "")) if isinstance(data, dict) else None

    async def job(self, name: str) -> Job | None:
        base = self.key("job", name) + b"/"
        response = await self.read_range(base, prefix_end(base))
        state = ClusterState()
        for kv in response.kvs:
            state.absorb(self.relative(kv.key), kv.value, kv.lease)
        job = state.jobs.get(name)
        if job is None or not job.unit_hash:
            return None
        job.unit = self.parsed(job.unit_hash, await self.unit_text(job.unit_hash))
        return job

    async def create_job(self, name: str, raw: str, *, replace: bool = False) -> bool:
        """Store the unit text and the job object; False when an identical job is already there.

        Raises :class:`UnitExists` when a job of that name holds other text and ``replace`` is
        not set. A replaced job keeps its target state, so a running unit restarts with the
        new text.
        """
        digest = unit_hash(raw)
        object_key = self.key("job", name, "object")
        unit_key = self.key("unit", digest)
        create = [
            self.put_op(unit_key, {"Raw": raw}),
            self.put_op(object_key, {"Name": name, "UnitHash": digest}),
            self.put_op(self.key("job", name, "target-state"), "inactive"),
        ]
        absent = rpc.Compare(
            key=object_key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
        )
        response = await self.txn(
            [absent], create, [rpc.RequestOp(request_range=rpc.RangeRequest(key=object_key))]
        )
        if response.succeeded:
            return True
        kvs = response.responses[0].response_range.kvs
        current = _decode(kvs[0].value) if kvs else None
        if isinstance(current, dict) and current.get("UnitHash") == digest:
            return False
        if not replace:
            raise UnitExists(f"unit {name} already exists in the registry with different contents")
        await self.txn(
            [],
            [
                self.put_op(unit_key, {"Raw": raw}),
                self.put_op(object_key, {"Name": name, "UnitHash": digest}),
            ],
        )
        return True

    async def set_target_state(self, name: str, target_state: TargetState) -> None:
        if target_state not in TARGET_STATES:
            raise RegistryError(f"invalid target state {target_state!r}")
        object_key = self.key("job", name, "object")
        exists = rpc.Compare(
            key=object_key, target=rpc.Compare.CREATE, result=rpc.Compare.GREATER, create_revision=0
        )
        response = await self.txn(
            [exists], [self.put_op(self.key("job", name, "target-state"), target_state)]
        )
        if not response.succeeded:
            raise UnitNotFound(f"unit {name} does not exist")

    async def destroy(self, name: str) -> bool:
        """Delete the job; the agent stops the unit when its assignment goes away."""
        response = await self.txn([], [self.delete_op(self.key("job", name) + b"/", prefix=True)])
        return bool(response.responses[0].response_delete_range.deleted)

    async def list_jobs(self) -> dict[str, Job]:
        base = self.key("job") + b"/"
        response = await self.read_range(base, prefix_end(base))
        state = ClusterState()
        for kv in response.kvs:
            state.absorb(self.relative(kv.key), kv.value, kv.lease)
        return {name: job for name, job in state.jobs.items() if job.unit_hash}

    async def machines(self) -> dict[str, Machine]:
        base = self.key("machines") + b"/"
        response = await self.read_range(base, prefix_end(base))
        state = ClusterState()
        for kv in response.kvs:
            state.absorb(self.relative(kv.key), kv.value, kv.lease)
        return state.machines

    async def unit_states(self, name: str | None = None) -> dict[str, dict[str, UnitState]]:
        base = self.key("states", name) + b"/" if name else self.key("states") + b"/"
        response = await self.read_range(base, prefix_end(base))
        state = ClusterState()
        for kv in response.kvs:
            state.absorb(self.relative(kv.key), kv.value, kv.lease)
        return state.states

    async def register_machine(self, machine: Machine, lease: int) -> None:
        await self.txn(
            [], [self.put_op(self.key("machines", machine.id, "object"), machine.to_json(), lease)]
        )

    async def publish_state(self, name: str, state: UnitState, lease: int) -> None:
        key = self.key("states", name, state.machine_id)
        await self.txn([], [self.put_op(key, state.to_json(), lease)])

    async def remove_state(self, name: str, machine_id: str) -> None:
        await self.txn([], [self.delete_op(self.key("states", name, machine_id))])


class KeptLease:
    """A store lease refreshed every third of its TTL until closed or lost.

    ``lost`` is set when a refresh finds the lease gone (expired while the store was
    unreachable, or revoked); the holder must then start again with a new lease.
    """

    def __init__(self, client: EtcdClient, ttl: int) -> None:
        self.client = client
        self.ttl = max(1, int(ttl))
        self.id = 0
        self.lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def grant(self) -> int:
        lease = await self.client.lease(self.ttl)
        self.id = lease.id
        self.lost.clear()
        self._task = asyncio.create_task(self._refresh(), name=f"lease-{self.id}")
        return self.id

    async def _refresh(self) -> None:
        interval = max(0.2, self.ttl / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                reply = await asyncio.wait_for(self.client.refresh_lease(self.id), self.ttl)
            except (EtcdError, TimeoutError, OSError):
                # A store that does not answer may come back before the TTL runs out;
                # only an answer that the lease is gone ends it.
                raise_if_cancelling()
                continue
            if reply is None or reply.TTL <= 0:
                self.lost.set()
                return

    async def close(self, *, revoke: bool = True) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if revoke and self.id:
            with contextlib.suppress(EtcdError, TimeoutError, OSError):
                await asyncio.wait_for(self.client.revoke_lease(self.id), 2)
        self.id = 0
