"""Provides the leader-elected engine that places units on machines, and its placement rules."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import heapq
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from aetcd import rpc

from clustertui.backend.etcd import EtcdClient, EtcdError
from clustertui.backend.fleet.model import ClusterState, Job, Machine
from clustertui.backend.fleet.registry import MAX_TXN_OPS, KeptLease, Registry
from clustertui.backend.fleet.tasks import (
    first_completed,
    raise_if_cancelling,
    wait_event,
    watch_changes,
)
from clustertui.backend.fleet.unitfile import FleetOptions

log = logging.getLogger(__name__)
COALESCE_SECONDS = 0.05


@dataclass(frozen=True)
class Decision:
    """Where one unit should run (``target``), or why it cannot (``reason``)."""

    target: str = ""
    reason: str = ""


@dataclass
class _Unit:
    name: str
    options: FleetOptions
    current: str


@dataclass
class _Placement:
    """Machines and what has been placed on them so far in one scheduling pass."""

    machines: dict[str, Machine]
    load: dict[str, int] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    patterns: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    heap: list[tuple[int, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for machine_id in self.machines:
            self.load[machine_id] = 0
            self.names[machine_id] = []
            self.patterns[machine_id] = []

    def place(self, unit: _Unit, machine_id: str) -> None:
        self.load[machine_id] += 1
        self.names[machine_id].append(unit.name)
        for pattern in (*unit.options.conflicts, *unit.options.replaces):
            self.patterns[machine_id].append((unit.name, pattern))
        heapq.heappush(self.heap, (self.load[machine_id], machine_id))

    def build_heap(self) -> None:
        self.heap = [(load, machine_id) for machine_id, load in self.load.items()]
        heapq.heapify(self.heap)

    def conflicts(self, unit: _Unit, machine_id: str) -> str:
        """The name of a unit on the machine that conflicts with ``unit``, both ways; or ''."""
        for owner, pattern in self.patterns[machine_id]:
            if owner != unit.name and fnmatch.fnmatchcase(unit.name, pattern):
                return owner
        mine = (*unit.options.conflicts, *unit.options.replaces)
        if mine:
            for other in self.names[machine_id]:
                if other != unit.name and any(fnmatch.fnmatchcase(other, p) for p in mine):
                    return other
        return ""


def metadata_matches(wanted: dict[str, tuple[str, ...]], machine: Machine) -> bool:
    """Every key must match, and a key's repeated values are alternatives (fleet's rule)."""
    return all(machine.metadata.get(key) in values for key, values in wanted.items())


def machine_id_matches(wanted: str, machine_ids: Iterable[str]) -> list[str]:
    """The machines a MachineID= value names: the full ID, or every ID with that prefix."""
    ids = list(machine_ids)
    if wanted in ids:
        return [wanted]
    return [machine_id for machine_id in ids if machine_id.startswith(wanted)]


def global_runs_on(options: FleetOptions, machine: Machine) -> bool:
    """Whether a global unit with these options runs on ``machine``."""
    if options.machine_id and machine_id_matches(options.machine_id, [machine.id]) != [machine.id]:
        return False
    return metadata_matches(options.metadata, machine)


def _describe_metadata(wanted: dict[str, tuple[str, ...]]) -> str:
    return " ".join(f"{key}={'|'.join(values)}" for key, values in sorted(wanted.items()))


def schedule(state: ClusterState) -> dict[str, Decision]:
    """Decide where every submitted unit runs: a pure function of the registry's contents.

    Placements that are still valid stay where they are, so a reconcile moves nothing that
    does not need to move. New and displaced units go to the least-loaded machine that meets
    their constraints, ties broken by machine ID.
    """
    decisions: dict[str, Decision] = {}
    units: dict[str, _Unit] = {}
    global_units: dict[str, FleetOptions] = {}
    for name, job in sorted(state.jobs.items()):
        if job.target_state == "inactive":
            decisions[name] = Decision()
        elif job.unit is None:
            decisions[name] = Decision(reason="the unit file in the registry cannot be parsed")
        else:
            try:
                options = job.unit.fleet(name)
            except ValueError as error:
                decisions[name] = Decision(reason=f"invalid [X-Fleet] options: {error}")
                continue
            if options.is_global:
                # Global units are not placed: every agent whose machine matches runs them.
                decisions[name] = Decision()
                global_units[name] = options
            else:
                units[name] = _Unit(name, options, job.target)
    # An invalid machine record (an ID, PublicIP or metadata that fails validation) is
    # never a place to run anything; units placed there move on.
    placement = _Placement(dict(sorted((i, m) for i, m in state.machines.items() if not m.problem)))
    for name, options in global_units.items():
        # Where a global unit runs, its Conflicts apply to placed units, both ways.
        for machine_id, machine in placement.machines.items():
            if global_runs_on(options, machine):
                placement.names[machine_id].append(name)
                placement.patterns[machine_id].extend((name, p) for p in options.conflicts)
    order = _order(units, decisions)
    replaced_by: dict[str, list[str]] = {}
    for unit in order:
        for replaced in unit.options.replaces:
            replaced_by.setdefault(replaced, []).append(unit.name)

    pending: list[_Unit] = []
    for unit in order:
        keep = unit.current in placement.machines
        for replacer in replaced_by.get(unit.name, []):
            other = units[replacer].current
            # A new replacer takes this unit's machine, so this unit moves on.
            if not other or other not in placement.machines or other == unit.current:
                keep = False
        if keep and not _why_not(unit, unit.current, placement, decisions):
            placement.place(unit, unit.current)
            decisions[unit.name] = Decision(unit.current)
        else:
            pending.append(unit)

    placement.build_heap()
    simple_world = not any(placement.patterns.values()) and not any(
        u.options.conflicts or u.options.replaces for u in pending
    )
    for unit in pending:
        decisions[unit.name] = _place(unit, placement, decisions, units, simple_world)
    return decisions


def _order(units: dict[str, _Unit], decisions: dict[str, Decision]) -> list[_Unit]:
    """MachineOf targets before their followers, replacers before what they replace."""
    depth: dict[str, int] = {}

    def measure(name: str, seen: frozenset[str]) -> int:
        if name in depth:
            return depth[name]
        unit = units.get(name)
        if unit is None:
            return 0
        if name in seen:
            raise ValueError(name)
        result = 0
        for leader in unit.options.machine_of:
            result = max(result, measure(leader, seen | {name}) + 1)
        depth[name] = result
        return result

    ordered: list[_Unit] = []
    for name, unit in units.items():
        try:
            measure(name, frozenset())
        except ValueError:
            decisions[name] = Decision(reason="MachineOf= dependencies form a cycle")
            continue
        ordered.append(unit)
    ordered.sort(key=lambda u: (depth.get(u.name, 0), not u.options.replaces, u.name))
    return ordered


def _why_not(
    unit: _Unit, machine_id: str, placement: _Placement, decisions: dict[str, Decision]
) -> str:
    """Why ``unit`` cannot run on ``machine_id``, or '' when it can."""
    machine = placement.machines[machine_id]
    options = unit.options
    if options.machine_id and machine_id_matches(options.machine_id, [machine_id]) != [machine_id]:
        return f"MachineID={options.machine_id}"
    if options.metadata and not metadata_matches(options.metadata, machine):
        return "metadata"
    for leader in options.machine_of:
        if decisions.get(leader, Decision()).target != machine_id:
            return f"MachineOf={leader}"
    other = placement.conflicts(unit, machine_id)
    if other:
        return f"conflicts with {other}"
    return ""


def _place(
    unit: _Unit,
    placement: _Placement,
    decisions: dict[str, Decision],
    units: dict[str, _Unit],
    simple_world: bool,
) -> Decision:
    options = unit.options
    if not placement.machines:
        return Decision(reason="no machines are in the cluster")
    if options.machine_id:
        matches = machine_id_matches(options.machine_id, placement.machines)
        if not matches:
            return Decision(reason=f"no machine matches MachineID={options.machine_id}")
        if len(matches) > 1:
            return Decision(
                reason=f"MachineID={options.machine_id} matches {len(matches)} machines; "
                "give a longer prefix"
            )
    for leader in options.machine_of:
        if not decisions.get(leader, Decision()).target:
            return Decision(reason=f"MachineOf={leader}: {leader} is not scheduled")
    if not (options.machine_id or options.metadata or options.machine_of) and simple_world:
        return _place_least_loaded(unit, placement)
    candidates = list(placement.machines)
    if options.machine_id:
        candidates = machine_id_matches(options.machine_id, candidates)
    if options.metadata:
        candidates = [
            m for m in candidates if metadata_matches(options.metadata, placement.machines[m])
        ]
        if not candidates:
            return Decision(
                reason=f"no machine has the metadata {_describe_metadata(options.metadata)}"
            )
    preferred = [
        units[r].current
        for r in options.replaces
        if r in units and units[r].current in placement.machines
    ]
    best = ""
    refusal = ""
    for machine_id in preferred + sorted(candidates, key=lambda m: (placement.load[m], m)):
        if machine_id not in candidates:
            continue
        why = _why_not(unit, machine_id, placement, decisions)
        if not why:
            best = machine_id
            break
        refusal = refusal or why
    if not best:
        if refusal.startswith("MachineOf="):
            leader = refusal.split("=", 1)[1]
            return Decision(reason=f"MachineOf={leader}: its machine cannot take this unit")
        if refusal.startswith("conflicts with"):
            return Decision(reason=f"every matching machine runs a conflicting unit ({refusal})")
        return Decision(reason=f"no machine can take the unit ({refusal or 'no candidates'})")
    placement.place(unit, best)
    return Decision(best)


def _place_least_loaded(unit: _Unit, placement: _Placement) -> Decision:
    while placement.heap:
        load, machine_id = placement.heap[0]
        if placement.load[machine_id] != load:
            # A stale entry: the machine got more load after this entry was pushed.
            heapq.heappop(placement.heap)
            continue
        heapq.heappop(placement.heap)
        placement.place(unit, machine_id)
        return Decision(machine_id)
    return Decision(reason="no machines are in the cluster")


RUNNING_STATES = frozenset({"active", "activating", "deactivating", "reloading"})


def hold_handoffs(state: ClusterState, decisions: dict[str, Decision]) -> int:
    """A unit goes to a machine only once no other machine reports it running.

    A machine's reports live on its presence lease, so a report that is still there means the
    machine may still run the unit: the unit waits, unplaced (which tells that machine to stop
    it), until the report says it stopped or goes with the machine's lease. Never two copies,
    whether the unit moves for its constraints or because its machine fell silent. Returns
    the number of units held.
    """
    held = 0
    for name, decision in decisions.items():
        if not decision.target:
            continue
        for machine_id, reported in sorted(state.states.get(name, {}).items()):
            if machine_id != decision.target and reported.active_state in RUNNING_STATES:
                decisions[name] = Decision(reason=f"waiting for machine {machine_id} to stop it")
                held += 1
                break
    return held


def hold_vanished(state: ClusterState, decisions: dict[str, Decision], waiting: set[str]) -> int:
    """Units of a machine that vanished a moment ago stay put (no write) for now.

    A lease the store ended early (revoked by hand, or by a store leader that was stuck) is
    news to its agent until its next renewal, a sixth of the TTL later, when it kills its
    units at once: only then may they start elsewhere.
    """
    held = 0
    for name, decision in decisions.items():
        job = state.jobs.get(name)
        if job is not None and job.target in waiting and decision.target != job.target:
            decisions[name] = Decision(job.target, job.reason)
            held += 1
    return held


def machine_guards(
    state: ClusterState, decisions: dict[str, Decision], registry: Registry
) -> list[rpc.Compare]:
    """Compares that fail if a machine a unit moves away from registered since the read.

    A machine that comes back (a fenced agent registering anew) between the engine's read
    and its write must not find its units placed elsewhere on a stale view of it.
    """
    left: set[str] = set()
    for name, decision in decisions.items():
        job = state.jobs.get(name)
        if job is not None and job.target and decision.target != job.target:
            left.add(job.target)
    return [
        rpc.Compare(
            key=registry.key("machines", machine_id, "object"),
            target=rpc.Compare.MOD,
            result=rpc.Compare.LESS,
            mod_revision=state.revision + 1,
        )
        for machine_id in sorted(left)
    ]


def changes(
    state: ClusterState, decisions: dict[str, Decision], registry: Registry
) -> list[rpc.RequestOp]:
    """The writes that turn the registry's targets and reasons into ``decisions``."""
    ops: list[rpc.RequestOp] = []
    for name, decision in decisions.items():
        job: Job = state.jobs[name]
        if decision.target != job.target:
            key = registry.key("job", name, "target")
            if decision.target:
                ops.append(registry.put_op(key, decision.target))
            else:
                ops.append(registry.delete_op(key))
        if decision.reason != job.reason:
            key = registry.key("job", name, "reason")
            if decision.reason:
                ops.append(registry.put_op(key, decision.reason))
            else:
                ops.append(registry.delete_op(key))
    return ops


class Engine:
    """An engine candidate: campaigns for the leader lease, and reconciles while it holds it."""

    def __init__(
        self,
        client: EtcdClient,
        registry: Registry,
        machine_id: str,
        *,
        ttl: int = 10,
        reconcile_interval: float = 2.0,
    ) -> None:
        self.client = client
        self.registry = registry
        self.machine_id = machine_id
        self.ttl = max(1, int(ttl))
        self.reconcile_interval = reconcile_interval
        self.is_leader = False
        self.elected = asyncio.Event()
        """Set while this engine holds the leader lease."""
        self.reconciles = 0
        self._dirty = asyncio.Event()
        self._held = 0
        self._states_changed = asyncio.Event()
        self._present: set[str] = set()
        self._vanished: dict[str, float] = {}
        self._elected_at = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Campaign, lead, and campaign again after losing the lease, until ``stop`` is set."""
        backoff = 0.2
        while not stop.is_set():
            try:
                lease = KeptLease(self.client, self.ttl)
                await lease.grant()
                try:
                    if await self._campaign(lease):
                        backoff = 0.2
                        await self._lead(lease, stop)
                    else:
                        await lease.close()
                        await self._wait_for_vacancy(stop)
                finally:
                    self.is_leader = False
                    self.elected.clear()
                    await lease.close(revoke=True)
            except (EtcdError, TimeoutError, OSError) as error:
                log.warning("engine: store error: %s", error)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 5.0)

    async def _campaign(self, lease: KeptLease, *, retake: bool = True) -> bool:
        key = self.registry.leader_key
        vacant = rpc.Compare(
            key=key, target=rpc.Compare.CREATE, result=rpc.Compare.EQUAL, create_revision=0
        )
        response = await self.registry.txn(
            [vacant],
            [self.registry.put_op(key, self.machine_id, lease.id)],
            [rpc.RequestOp(request_range=rpc.RangeRequest(key=key))],
        )
        if response.succeeded:
            return True
        held = response.responses[0].response_range.kvs
        ours = self.registry.put_op(b"", self.machine_id).request_put.value
        if retake and held and held[0].value == ours and held[0].lease not in (0, lease.id):
            # Our own leadership from before a restart: rather than wait for its lease to
            # run out, end it and campaign again.
            with contextlib.suppress(EtcdError):
                await self.client.revoke_lease(held[0].lease)
            return await self._campaign(lease, retake=False)
        return False

    async def _wait_for_vacancy(self, stop: asyncio.Event) -> None:
        """Return when the leader key is deleted (or expires), or after a while to re-check."""
        key = self.registry.leader_key
        response = await self.registry.read_range(key)
        if not response.kvs:
            return
        revision = response.header.revision

        async def deleted() -> None:
            async for batch in self.client.watch_batches(key, start_revision=revision + 1):
                if any(e.type == rpc.Event.DELETE for e in batch.events):
                    return

        await first_completed(stop.wait(), deleted(), asyncio.sleep(max(self.ttl, 1) * 3))

    async def _lead(self, lease: KeptLease, stop: asyncio.Event) -> None:
        # A new leader does not know when the machines it misses vanished: as if just now.
        self._elected_at = time.monotonic()
        self.is_leader = True
        self.elected.set()
        log.info("engine: %s is the leader", self.machine_id)
        self._dirty.set()
        watchers = [
            asyncio.create_task(
                watch_changes(
                    self.client, self.registry.key(section) + b"/", self._dirty, f"engine {section}"
                )
            )
            for section in ("job", "machines")
        ]
        # Reports matter only while a unit waits for a machine to stop it.
        watchers.append(
            asyncio.create_task(
                watch_changes(
                    self.client, self.registry.key("states") + b"/", self._states_changed, "engine"
                )
            )
        )
        watchers.append(asyncio.create_task(self._relay_states()))
        try:
            await first_completed(
                stop.wait(), lease.lost.wait(), self._reconcile_loop(lease), *watchers
            )
        finally:
            for task in watchers:
                task.cancel()
            for task in watchers:
                with contextlib.suppress(asyncio.CancelledError, EtcdError):
                    await task

    def _just_vanished(self, state: ClusterState) -> set[str]:
        """Machines gone from the store less than a renewal interval ago (and a re-check then)."""
        now = time.monotonic()
        present = set(state.machines)
        grace = self.ttl / 6 + 0.2
        for gone in self._present - present:
            self._vanished.setdefault(gone, now)
        if now - self._elected_at < grace:
            targets = {job.target for job in state.jobs.values() if job.target}
            for gone in targets - present:
                self._vanished.setdefault(gone, self._elected_at)
        self._present = present
        self._vanished = {
            m: at for m, at in self._vanished.items() if m not in present and now - at < grace
        }
        if self._vanished:
            wake = grace - (now - min(self._vanished.values())) + 0.01
            asyncio.get_running_loop().call_later(max(0.01, wake), self._dirty.set)
        return set(self._vanished)

    async def _relay_states(self) -> None:
        while True:
            await self._states_changed.wait()
            self._states_changed.clear()
            if self._held:
                self._dirty.set()

    async def _reconcile_loop(self, lease: KeptLease) -> None:
        while True:
            await wait_event(self._dirty, self.reconcile_interval)
            # Changes come in bursts (a submit of many units, a machine and its states
            # going away): a moment's wait lets one pass handle the whole burst.
            await asyncio.sleep(COALESCE_SECONDS)
            self._dirty.clear()
            await self.reconcile(lease)
            raise_if_cancelling()  # a pass that met a store error may have worn the cancel

    async def reconcile(self, lease: KeptLease | None = None) -> int:
        """One pass: read, decide, write the differences. Returns the number of writes."""
        state = await self.registry.snapshot(("job", "unit", "machines", "lease", "states"))
        if state.leader != self.machine_id:
            # Someone else holds the lease now (ours expired while we were slow).
            if lease is not None:
                lease.lost.set()
            return 0
        decisions = schedule(state)
        self._held = hold_handoffs(state, decisions)
        waiting = self._just_vanished(state)
        if waiting:
            hold_vanished(state, decisions, waiting)
        ops = changes(state, decisions, self.registry)
        if ops and log.isEnabledFor(logging.INFO):
            for name, decision in sorted(decisions.items()):
                job = state.jobs[name]
                if (decision.target, decision.reason) != (job.target, job.reason):
                    log.info(
                        "engine: %s: %s -> %s%s",
                        name,
                        job.target[:8] or "-",
                        decision.target[:8] or "-",
                        f" ({decision.reason})" if decision.reason else "",
                    )
        ours = self.registry.put_op(b"", self.machine_id).request_put.value
        leader_check = rpc.Compare(
            key=self.registry.leader_key,
            target=rpc.Compare.VALUE,
            result=rpc.Compare.EQUAL,
            value=ours,
        )
        guards = machine_guards(state, decisions, self.registry)[: MAX_TXN_OPS // 2]
        size = MAX_TXN_OPS - 1 - len(guards)
        read_leader = rpc.RequestOp(request_range=rpc.RangeRequest(key=self.registry.leader_key))
        for start in range(0, len(ops), size):
            response = await self.registry.txn(
                [leader_check, *guards], ops[start : start + size], [read_leader]
            )
            if not response.succeeded:
                held = response.responses[0].response_range.kvs
                if guards and held and held[0].value == ours:
                    # Still the leader: a machine came back since the read; read again.
                    self._dirty.set()
                    return start
                if lease is not None:
                    lease.lost.set()
                return start
        self.reconciles += 1
        return len(ops)


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    await wait_event(stop, seconds)
