"""Provides the agent: registers the machine, runs the units placed on it, reports their states."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from clustertui.backend.etcd import EtcdClient, EtcdError
from clustertui.backend.fleet.engine import global_runs_on
from clustertui.backend.fleet.fence import DEFAULT_MARGIN, SAFETY, FencedLease, clock
from clustertui.backend.fleet.model import ClusterState, Job, Machine, UnitState, unit_is_global
from clustertui.backend.fleet.output import LineSink
from clustertui.backend.fleet.registry import Registry
from clustertui.backend.fleet.runner import UnitRunner, reap_orphans
from clustertui.backend.fleet.tasks import (
    first_completed,
    raise_if_cancelling,
    wait_event,
    watch_changes,
)

log = logging.getLogger(__name__)


@dataclass
class _Entry:
    runner: UnitRunner
    launched: bool = False
    ops: asyncio.Task[None] | None = None
    fenced: str = ""
    """Why the unit was stopped for a lost lease ("lost the store at HH:MM:SS"), until it starts."""


class Agent:
    """One machine's agent: presence lease, assignments, unit processes and their states."""

    def __init__(
        self,
        client: EtcdClient,
        registry: Registry,
        machine: Machine,
        *,
        data_dir: Path,
        sink: LineSink,
        ttl: int = 30,
        reconcile_interval: float = 5.0,
        fence_margin: float = DEFAULT_MARGIN,
    ) -> None:
        self.client = client
        self.registry = registry
        self.machine = machine
        self.data_dir = data_dir
        self.run_dir = data_dir / "run"
        self.sink = sink
        self.ttl = max(1, int(ttl))
        self.reconcile_interval = reconcile_interval
        self.fence_margin = fence_margin
        """Part of the TTL kept for stopping units when renewals fail; 0: never fence."""
        self.units: dict[str, _Entry] = {}
        self.registered = asyncio.Event()
        self.fenced_at = 0.0
        """Wall time of the last renewal before this agent fenced itself; 0 while not fenced."""
        self.fences = 0
        self._lease: FencedLease | None = None
        self._fenced_leases: list[int] = []
        self._fenced_reports: set[str] = set()
        self._stale_reports: set[str] = set()
        """Units retired here whose report could not be removed (the store was away): each
        reconcile tries again, or a leftover "active" report would hold the unit's handoff
        to another machine for as long as this machine's lease lives."""
        self._dirty = asyncio.Event()
        self._unpublished: set[str] = set()
        self._publish_wanted = asyncio.Event()
        self._retiring: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then stop every unit and remove this machine's presence."""
        for name in await asyncio.to_thread(reap_orphans, self.run_dir):
            log.warning("agent: stopped %s left running by a previous agent", name)
        backoff = 0.2
        watchdog = asyncio.create_task(self._fence_watch(), name="fence-watch")
        restore = self._on_resume_install()
        try:
            while not stop.is_set():
                lease = FencedLease(self.client, self.ttl, self.fence_margin)
                try:
                    await lease.grant()
                    await self.registry.register_machine(self.machine, lease.id)
                    log.info("agent: registered with lease %x", lease.id)
                    self._lease = lease
                    await self._end_fence()
                    self._unpublished.update(self.units)
                    self._publish_wanted.set()
                    self.registered.set()
                    backoff = 0.2
                    await first_completed(
                        stop.wait(),
                        lease.lost.wait(),
                        watch_changes(
                            self.client, self.registry.key("job") + b"/", self._dirty, "agent"
                        ),
                        self._reconcile_loop(),
                        self._publish_loop(),
                    )
                    if lease.lost.is_set():
                        log.warning("agent: presence lease lost; registering again")
                        # Gone from the store before the fence clock ran out (revoked, or a
                        # store whose clock ran fast): the units are no longer ours at all.
                        self.check_fence(lost=True)
                except (EtcdError, TimeoutError, OSError) as error:
                    log.warning("agent: store error: %s", error)
                    await wait_event(stop, backoff)
                    # Short: a fenced agent is back soon after the store (its units wait for it).
                    backoff = min(backoff * 2, 2.0)
                finally:
                    self.registered.clear()
                    if not stop.is_set():
                        await lease.close(revoke=False)
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            restore()
            await self.shutdown()

    # Fencing: the units placed here are this machine's only while its lease lives.

    def owns_units(self) -> bool:
        """Whether this agent may run non-global units now: registered, and the lease trusted."""
        lease = self._lease
        if self.fence_margin <= 0:
            return lease is not None
        return not self.fenced_at and lease is not None and time.monotonic() < lease.fence_at

    async def _fence_watch(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.check_fence()

    def check_fence(self, *, lost: bool = False) -> None:
        """Fence when the lease has gone unrenewed for TTL - margin (or longer: a freeze).

        ``lost``: the store said the lease is gone; the units are killed at once.
        """
        lease = self._lease
        if lease is None or self.fenced_at or self.fence_margin <= 0 or not lease.granted:
            return
        now = time.monotonic()
        if now < lease.fence_at and not lost:
            return
        self.fenced_at = lease.renewed_wall or time.time()
        self.fences += 1
        late = lost or now >= lease.expires - SAFETY
        why = f"lost the store at {clock(self.fenced_at)}"
        log.warning(
            "agent: no lease renewal for %.1fs of the %ds TTL: fenced (%s); stopping units",
            now - lease.renewed,
            self.ttl,
            why,
        )
        for name, entry in self.units.items():
            if self._is_global(entry) or not entry.runner.running:
                continue
            entry.fenced = why
            entry.launched = False
            if late:
                # Frozen past the lease's end: the unit may already run elsewhere.
                entry.runner.kill_now()
                entry.runner._note(f"fenced: {why}; the lease has expired: killed at once", 4)
                budget = 0.0
            else:
                entry.runner._note(
                    f"fenced: {why}; stopping before the lease can expire "
                    f"({lease.ttl}s TTL, {self.fence_margin:g} margin)",
                    4,
                )
                budget = max(0.0, lease.expires - SAFETY - now)
            task = asyncio.create_task(entry.runner.fence(budget), name=f"fence-{name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            # The fence runs at once (its deadline cannot wait behind a slow stop), but the
            # unit's next operations wait for it: a start while the unit is still stopping
            # would find it running and do nothing, and it would stay dead for good.
            self._queue(name, entry, self._await_fence(task))
        # The session ends: the next one registers anew and takes what the engine gives.
        self._fenced_leases.append(lease.granted)
        lease.lost.set()

    @staticmethod
    async def _await_fence(task: asyncio.Task[None]) -> None:
        await asyncio.wait({task})

    async def _end_fence(self) -> None:
        """Registered anew: the leases given up are revoked (their states go with them)."""
        for lease_id in self._fenced_leases:
            with contextlib.suppress(EtcdError, TimeoutError, OSError):
                await asyncio.wait_for(self.client.revoke_lease(lease_id), 2)
        self._fenced_leases.clear()
        if self.fenced_at:
            log.warning("agent: registered again after the fence of %s", clock(self.fenced_at))
        self.fenced_at = 0.0

    def _on_resume_install(self) -> Callable[[], None]:
        """On SIGCONT, before anything else runs: kill the units the lease no longer covers."""
        if threading.current_thread() is not threading.main_thread():
            return lambda: None
        loop = asyncio.get_running_loop()

        def resumed(signum: int, frame: FrameType | None) -> None:
            lease = self._lease
            if lease is not None and lease.granted and not self.fenced_at and self.fence_margin > 0:
                if time.monotonic() >= lease.expires - SAFETY:
                    for entry in self.units.values():
                        if not self._is_global(entry):
                            entry.runner.kill_now()
            loop.call_soon_threadsafe(self.check_fence)
            if callable(previous):
                previous(signum, frame)

        try:
            previous = signal.signal(signal.SIGCONT, resumed)
        except ValueError:
            return lambda: None

        def restore() -> None:
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGCONT, previous)

        return restore

    @staticmethod
    def _is_global(entry: _Entry) -> bool:
        return unit_is_global(entry.runner.unit, entry.runner.name)

    async def shutdown(self) -> None:
        """Stop every unit, then take this machine's states and presence out of the store."""
        entries = list(self.units.values())
        # Queued starts must run before the stops, or they would start after them; units
        # being retired finish stopping too.
        pending = [e.ops for e in entries if e.ops is not None] + list(self._retiring)
        if pending:
            await asyncio.wait(pending)
        await asyncio.gather(*(self._stop_entry(entry) for entry in entries))
        # The machine object and every state hang on the presence lease: revoking it takes
        # them all out in one request (and if the store is away, they expire with it).
        if self._lease is not None:
            await self._lease.close(revoke=True)
        self.units.clear()
        self.sink.flush()

    async def _reconcile_loop(self) -> None:
        self._dirty.set()
        while True:
            await wait_event(self._dirty, self.reconcile_interval)
            self._dirty.clear()
            await self.reconcile()
            raise_if_cancelling()  # a pass that met a store error may have worn the cancel

    def wanted(self, state: ClusterState) -> dict[str, Job]:
        """The jobs this machine should hold: those placed here, and matching global units."""
        wanted: dict[str, Job] = {}
        me = self.machine
        for name, job in state.jobs.items():
            if job.unit is None or job.target_state == "inactive":
                continue
            try:
                options = job.unit.fleet(name)
            except ValueError:
                continue
            if options.is_global:
                if global_runs_on(options, me):
                    wanted[name] = job
            elif job.target == me.id:
                wanted[name] = job
        return wanted

    async def reconcile(self) -> None:
        state = await self.registry.snapshot(("job", "unit"))
        wanted = self.wanted(state)
        for name in [n for n in self._fenced_reports if n not in state.jobs or n in wanted]:
            self._fenced_reports.discard(name)
            if name not in wanted:
                with contextlib.suppress(EtcdError, TimeoutError, OSError):
                    await self.registry.remove_state(name, self.machine.id)
        for name in list(self._stale_reports):
            if name in self.units or name in self._fenced_reports:
                self._stale_reports.discard(name)  # a newer report speaks for it
                continue
            try:
                await self.registry.remove_state(name, self.machine.id)
            except (EtcdError, TimeoutError, OSError):
                break  # the store is away again: the next reconcile tries
            self._stale_reports.discard(name)
        for name in [n for n in self.units if n not in wanted]:
            retired = self.units.pop(name)
            self._queue(name, retired, self._retire(name, retired))
            if retired.ops is not None:
                self._retiring.add(retired.ops)
                retired.ops.add_done_callback(self._retiring.discard)
        for name, job in wanted.items():
            assert job.unit is not None
            entry = self.units.get(name)
            if entry is not None and entry.runner.unit_hash != job.unit_hash:
                # New unit text: stop the old processes before the new ones start.
                self.units.pop(name)
                self._queue(name, entry, self._stop_entry(entry))
                previous = entry.ops
                entry = None
            else:
                previous = None
            if entry is None:
                runner = UnitRunner(
                    name, job.unit, sink=self.sink, run_dir=self.run_dir, on_change=self._changed
                )
                entry = _Entry(runner, ops=previous)
                self.units[name] = entry
                self._changed(runner)
            if job.target_state == "launched" and not entry.launched:
                entry.launched = True
                self._queue(name, entry, self._start_entry(entry))
            elif job.target_state == "loaded" and entry.launched:
                entry.launched = False
                self._queue(name, entry, self._stop_entry(entry))

    def _queue(self, name: str, entry: _Entry, operation: Awaitable[None]) -> None:
        """Run ``operation`` after the unit's earlier operations, without blocking reconcile."""
        previous = entry.ops

        async def chained() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await operation
            except Exception:
                log.exception("agent: operation on %s failed", name)

        entry.ops = asyncio.create_task(chained(), name=f"op-{name}")

    async def _start_entry(self, entry: _Entry) -> None:
        if not self._is_global(entry) and not self.owns_units():
            # Fenced (or the lease is past trusting): the next reconcile after
            # registering again decides.
            entry.launched = False
            return
        entry.fenced = ""
        entry.runner.start()

    async def _stop_entry(self, entry: _Entry) -> None:
        await entry.runner.stop()

    async def _retire(self, name: str, entry: _Entry) -> None:
        await entry.runner.stop()
        if name not in self.units:
            self._unpublished.discard(name)
            lease = self._lease
            with contextlib.suppress(EtcdError, TimeoutError, OSError):
                if entry.fenced and lease is not None and lease.id:
                    # Moved away while fenced: the report says so (on this machine's lease)
                    # until the job goes, or the unit comes back here.
                    state = self.state_of(entry.runner)
                    state.machine_state["Fenced"] = entry.fenced
                    await self.registry.publish_state(name, state, lease.id)
                    self._fenced_reports.add(name)
                else:
                    self._stale_reports.add(name)
                    await self.registry.remove_state(name, self.machine.id)
                    self._stale_reports.discard(name)

    def _changed(self, runner: UnitRunner) -> None:
        entry = self.units.get(runner.name)
        # A runner being replaced by one for new unit text no longer speaks for the unit.
        if entry is None or entry.runner is runner:
            self._unpublished.add(runner.name)
            self._publish_wanted.set()

    def state_of(self, runner: UnitRunner) -> UnitState:
        entry = self.units.get(runner.name)
        fenced = entry.fenced if entry is not None and entry.runner is runner else ""
        state = UnitState(
            load_state="loaded",
            active_state=runner.active_state,
            sub_state=runner.sub_state,
            unit_hash=runner.unit_hash,
            machine_id=self.machine.id,
            machine_state={
                "ID": self.machine.id,
                "PublicIP": self.machine.public_ip,
                "Metadata": self.machine.metadata,
            },
        )
        if fenced and not runner.running:
            state.machine_state["Fenced"] = fenced
        return state

    async def _publish_loop(self) -> None:
        while True:
            await self._publish_wanted.wait()
            self._publish_wanted.clear()
            lease = self._lease
            while self._unpublished and lease is not None:
                name = self._unpublished.pop()
                entry = self.units.get(name)
                if entry is None:
                    continue
                try:
                    await self.registry.publish_state(name, self.state_of(entry.runner), lease.id)
                except EtcdError:
                    self._unpublished.add(name)
                    raise
