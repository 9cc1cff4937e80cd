"""Provides the chaos world: a store, 3 nodes behind cuttable proxies, heartbeat units, faults.

One seed decides the faults and their timing, so a run can be replayed. A monitor thread
reads the units' heartbeat files every 100 ms and checks that no non-global unit ever has
two PIDs beating at once (except inside the documented window of a frozen node), that every
unit runs again within TTL + 5 s of a fault healing, and a writer thread records which of
its writes the store acknowledged, to find them all again at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from clustertui.backend.etcd import make_client
from clustertui.backend.fleet.registry import DEFAULT_PREFIX, Registry
from clustertui.backend.fleet.runner import reap_orphans
from clustertui.backend.keyspace import lease_ttl
from tests.fleet.conftest import NodeFactory
from tests.harness import heartbeat
from tests.harness.bundled import BundledStore
from tests.harness.etcd import EtcdCluster, EtcdMember, start_etcd_cluster
from tests.harness.proxy import TcpProxy

TTL = 2.0
SETTLE = TTL + 5.0
PREFIX = DEFAULT_PREFIX

# name -> [X-Fleet] body; global ones run on every node.
UNITS = {
    "db.service": "",
    "db-backup.service": "MachineOf=db.service",
    "web@1.service": "Conflicts=web@*.service",
    "web@2.service": "Conflicts=web@*.service",
    "web@3.service": "Conflicts=web@*.service",
    "queue.service": "",
    "cron.service": "",
    "cache.service": "",
    "monitor.service": "Global=true",
    "logship.service": "Global=true",
}
GLOBAL = {name for name, fleet in UNITS.items() if "Global=true" in fleet}


def port_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:``port`` now (as etcd does, SO_REUSEADDR)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def restart_member(member: EtcdMember, initial: str, within: float = 30.0) -> None:
    """Start a killed etcd member again on its ports, retrying while they are taken.

    A dead member's port can be held for a moment by someone else's socket: a client dialing
    the dead port from an ephemeral port that happens to be that very port (a TCP
    self-connect, which the proxies' dials can make), or any outbound connection given it.
    etcd then exits at once ("address already in use"); so wait until both ports are free,
    start, and try again on an early exit, until ``within`` seconds have passed.
    """
    if member.child is not None and member.child.alive():
        return  # restarted already (one heal of two overlapping faults)
    deadline = time.monotonic() + within
    while True:
        while not (port_free(member.client_port) and port_free(member.peer_port)):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{member.name}: ports {member.client_port}/{member.peer_port} "
                    f"still taken after {within:g}s"
                )
            time.sleep(0.1)
        member.start(initial)
        try:
            member.wait_ready(max(1.0, deadline - time.monotonic()))
            return
        except RuntimeError:
            # Exited early: most likely a port taken again between the check and its bind.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@dataclass
class Report:
    seed: int
    store: str
    faults: list[str] = field(default_factory=list)
    checks: int = 0
    violations: list[str] = field(default_factory=list)
    longest_down: dict[str, float] = field(default_factory=dict)
    acked: int = 0
    lost: int = 0

    def summary(self) -> str:
        worst = sorted(self.longest_down.items(), key=lambda kv: -kv[1])
        down = ", ".join(f"{name} {gap:.1f}s" for name, gap in worst)
        return (
            f"chaos seed={self.seed} store={self.store}: {len(self.faults)} faults survived, "
            f"{self.checks} invariant checks, {len(self.violations)} violations, "
            f"{self.acked} acknowledged writes ({self.lost} lost); longest unavailability: {down}"
        )


class World:
    """Everything one chaos run drives; ``start`` brings it up, ``stop`` takes it down."""

    def __init__(self, root: Path, store_kind: str, seed: int) -> None:
        self.root = root
        self.kind = store_kind
        self.seed = seed
        self.rng = random.Random(seed)
        self.report = Report(seed, store_kind)
        self.cluster: EtcdCluster | None = None
        self.bundled: BundledStore | None = None
        self.proxies: dict[str, list[TcpProxy]] = {}
        self.nodes = NodeFactory("", PREFIX, root / "nodes")
        self.children: dict[str, object] = {}
        self.script = heartbeat.write_script(root)
        self.frozen: list[tuple[float, float]] = []
        """Windows (start, end) in which a node was frozen: its copies may overlap there."""
        self.unhealed = 0
        self.healed_at = time.time()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acked: list[bytes] = []

    # Bring-up.

    @property
    def urls(self) -> list[str]:
        if self.cluster is not None:
            return self.cluster.urls
        assert self.bundled is not None
        return [self.bundled.url]

    def beats(self, unit: str) -> Path:
        return self.root / f"beats-{unit}"

    def start(self) -> None:
        if self.kind == "etcd":
            self.cluster = start_etcd_cluster(self.root / "etcd", 3)
        else:
            self.bundled = BundledStore(self.root / "bundled").start()
        for i in range(3):
            name = f"node{i}"
            self.proxies[name] = [TcpProxy.to_url(url) for url in self.urls]
            self._start_node(name)
        asyncio.run(self._submit())
        for target in (self._monitor, self._writer):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def _start_node(self, name: str) -> None:
        endpoints = ",".join(p.url for p in self.proxies[name])
        self.children[name] = self.nodes.start(
            name,
            "--endpoints",
            endpoints,
            # CHAOS_FENCE_MARGIN=0 turns fencing off: the monitor must then see two copies.
            "--fence-margin",
            os.environ.get("CHAOS_FENCE_MARGIN", "0.3"),
            *(["--verbose"] if os.environ.get("CHAOS_VERBOSE") else []),
            ttl=f"{TTL:g}s",
            machine_id=f"{name}{'0' * 27}",
        )

    async def _submit(self) -> None:
        registry = Registry(make_client(self.urls), PREFIX)
        try:
            for name, fleet in UNITS.items():
                text = heartbeat.unit_text(self.script, self.beats(name), fleet)
                await registry.create_job(name, text)
                await registry.set_target_state(name, "launched")
        finally:
            await registry.client.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for child in self.children.values():
            if child.alive():  # type: ignore[attr-defined]
                os.kill(child.pid, signal.SIGCONT)  # type: ignore[attr-defined]
        self.nodes.stop_all()
        for name in self.children:
            reap_orphans(self.nodes.root / name / "run", grace=1)
        for proxies in self.proxies.values():
            for proxy in proxies:
                proxy.stop()
        if self.cluster is not None:
            for member in self.cluster.members:
                if member.child is not None and member.child.alive():
                    os.kill(member.child.pid, signal.SIGCONT)
            self.cluster.stop()
        if self.bundled is not None:
            self.bundled.stop()

    # Invariants.

    def running_now(self, unit: str, within: float = 0.6) -> set[int]:
        now = time.time()
        return {s.pid for s in heartbeat.spans(self.beats(unit), now - 10) if now - s.last < within}

    def _monitor(self) -> None:
        """Every 100 ms: no two copies of a non-global unit; downtime per unit."""
        down_since: dict[str, float] = {}
        seen: set[tuple[str, int, int]] = set()
        while not self._stop.is_set():
            now = time.time()
            for unit in UNITS:
                self.report.checks += 1
                recent = heartbeat.spans(self.beats(unit), now - 15)
                pids = {s.pid for s in recent if now - s.last < 0.35}
                if unit not in GLOBAL:
                    # Two copies: one PID beat after the other's first beat and before its
                    # last (a handover leaves the old PID's last beat before the new first).
                    for one, other, _ in heartbeat.overlaps(recent):
                        start, end = max(one.first, other.first), min(one.last, other.last)
                        pair = (unit, one.pid, other.pid)
                        if pair not in seen and not self._in_freeze(start, end):
                            seen.add(pair)
                            self._violate(
                                f"{unit} ran twice from {start:.2f} to {end:.2f}: "
                                f"PIDs {one.pid} and {other.pid}"
                            )
                if pids:
                    if unit in down_since:
                        gap = now - down_since.pop(unit)
                        best = self.report.longest_down.get(unit, 0.0)
                        self.report.longest_down[unit] = max(best, gap)
                else:
                    down_since.setdefault(unit, now)
            time.sleep(0.1)

    def _in_freeze(self, start: float, end: float) -> bool:
        """Whether [start, end] lies in a node's freeze and the 0.5 s after it resumed."""
        with self._lock:
            return any(begin <= start and end <= until + 0.5 for begin, until in self.frozen)

    def _violate(self, text: str) -> None:
        with self._lock:
            if text not in self.report.violations:
                self.report.violations.append(text)
                print(f"  VIOLATION at {time.time():.1f}: {text}", flush=True)

    def _writer(self) -> None:
        """Writes a counter key every 50 ms through the store's endpoints; keeps what was acked."""

        async def write() -> None:
            client = make_client(self.urls, timeout=2)
            number = 0
            try:
                while not self._stop.is_set():
                    key = f"/chaos/acked/{number:08d}".encode()
                    number += 1
                    try:
                        await asyncio.wait_for(client.put(key, b"x"), 2)
                    except Exception:
                        await asyncio.sleep(0.1)
                        continue
                    self._acked.append(key)
                    await asyncio.sleep(0.05)
            finally:
                await client.close()

        asyncio.run(write())

    def check_all_running(self, within: float) -> list[str]:
        """Units not running (global: on fewer than every live node) after ``within`` s."""
        deadline = time.time() + within
        missing: list[str] = []
        while time.time() < deadline:
            missing = [u for u in UNITS if not self.running_now(u)]
            missing += [u for u in GLOBAL if len(self.running_now(u)) < 3 and u not in missing]
            if not missing:
                return []
            time.sleep(0.2)
        return missing

    def diagnose(self, units: list[str]) -> str:
        """Why units are not running, as the store sees it: each one's target and reason, the
        reports that hold it, and the seconds left on each machine's lease (the evidence a
        violation needs)."""

        async def read() -> str:
            client = make_client(self.urls, timeout=2)
            try:
                registry = Registry(client, PREFIX)
                state = await registry.snapshot(("job", "machines", "states"))
                parts = []
                for unit in units:
                    job = state.jobs.get(unit)
                    reports = {m[:5]: r.active_state for m, r in state.states.get(unit, {}).items()}
                    where = (job.target[:5] or "-") if job else "no job"
                    why = f" ({job.reason})" if job and job.reason else ""
                    parts.append(f"{unit} on {where}{why} reports {reports}")
                for machine_id in sorted(state.machines):
                    found = await registry.read_range(
                        registry.key("machines", machine_id, "object")
                    )
                    if found.kvs:
                        left = await lease_ttl(client, found.kvs[0].lease)
                        parts.append(f"{machine_id[:5]} lease {found.kvs[0].lease:x} {left}s left")
                return "; ".join(parts)
            finally:
                await client.close()

        try:
            return asyncio.run(asyncio.wait_for(read(), 10))
        except Exception as error:
            return f"no diagnosis: {error!r}"

    def check_acked(self) -> None:
        async def read() -> set[bytes]:
            client = make_client(self.urls)
            try:
                await client.wait_ready(30)
                return {item.key for item in await client.get_prefix(b"/chaos/acked/")}
            finally:
                await client.close()

        acked = list(self._acked)
        found = asyncio.run(read())
        lost = [key for key in acked if key not in found]
        self.report.acked = len(acked)
        self.report.lost = len(lost)
        if lost:
            self._violate(f"{len(lost)} acknowledged writes lost, first {lost[0]!r}")

    # Faults: each returns the function that heals it.

    def faults(self) -> list[Callable[[], Callable[[], None]]]:
        common = [self.cut_node, self.kill_node, self.freeze_node]
        if self.kind == "etcd":
            kinds = [*common, self.kill_etcd_leader, self.freeze_etcd_member]
        else:
            kinds = [*common, self.restart_bundled]
        # CHAOS_FAULT_KINDS=cut_node,restart_bundled: only those (to chase one problem).
        only = [k for k in os.environ.get("CHAOS_FAULT_KINDS", "").split(",") if k]
        return [k for k in kinds if not only or k.__name__ in only] or kinds

    def _node(self) -> str:
        return self.rng.choice(sorted(self.children))

    def cut_node(self) -> Callable[[], None]:
        name = self._node()
        for proxy in self.proxies[name]:
            proxy.cut()

        def heal() -> None:
            for proxy in self.proxies[name]:
                proxy.heal()

        return self._named(f"cut {name}", heal)

    def kill_node(self) -> Callable[[], None]:
        name = self._node()
        self.children[name].kill()  # type: ignore[attr-defined]
        # Restarted at once, as a supervisor does: it stops the orphans before it registers.
        self._start_node(name)
        return self._named(f"SIGKILL {name}", lambda: None)

    def freeze_node(self) -> Callable[[], None]:
        name = self._node()
        child = self.children[name]
        os.kill(child.pid, signal.SIGSTOP)  # type: ignore[attr-defined]
        started = time.time()
        with self._lock:
            self.frozen.append((started, float("inf")))
            index = len(self.frozen) - 1

        def heal() -> None:
            # An overlapping SIGKILL may have replaced the frozen process already.
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGCONT)  # type: ignore[attr-defined]
            with self._lock:
                self.frozen[index] = (started, time.time())

        return self._named(f"SIGSTOP {name}", heal)

    def _etcd_leader(self, within: float = 3.0) -> int | None:
        """The index of the member that leads now, waiting out an election; None if none."""
        assert self.cluster is not None
        deadline = time.monotonic() + within
        while True:
            for index, member in enumerate(self.cluster.members):
                if member.child is None or not member.child.alive():
                    continue
                try:
                    request = urllib.request.Request(
                        f"{member.url}/v3/maintenance/status", data=b"{}", method="POST"
                    )
                    with urllib.request.urlopen(request, timeout=1) as answer:
                        status = json.load(answer)
                    if status.get("leader") == status.get("header", {}).get("member_id"):
                        return index
                except OSError:
                    continue
            if time.monotonic() > deadline:
                return None
            time.sleep(0.1)

    def kill_etcd_leader(self) -> Callable[[], None]:
        """SIGKILL the member that leads, while all three run (never a quorum loss).

        It used to fall back to member 0 when no leader answered (an election under way
        after an overlapping leader kill): it killed the dead m0 again, and both heals started
        it, the second on ports the first held; its Child was replaced, so the first process
        ran on unseen and every later "leader kill" of m0 killed nothing.
        """
        assert self.cluster is not None
        down = [m.name for m in self.cluster.members if m.child is None or not m.child.alive()]
        index = None if down else self._etcd_leader()
        if index is None:
            why = f"{down[0]} is down" if down else "no leader elected"
            return self._named(f"SIGKILL etcd leader: skipped, {why}", lambda: None)
        member = self.cluster.members[index]
        member.kill()
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.cluster.members)

        def heal() -> None:
            restart_member(member, initial)

        return self._named(f"SIGKILL etcd leader {member.name}", heal)

    def freeze_etcd_member(self) -> Callable[[], None]:
        assert self.cluster is not None
        alive = [m for m in self.cluster.members if m.child is not None and m.child.alive()]
        member = self.rng.choice(alive or self.cluster.members)
        assert member.child is not None
        pid = member.child.pid
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGSTOP)

        def heal() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

        return self._named(f"SIGSTOP etcd {member.name}", heal)

    def restart_bundled(self) -> Callable[[], None]:
        assert self.bundled is not None
        self.bundled.stop()
        bundled = self.bundled

        def heal() -> None:
            # Two overlapping restarts heal once.
            if bundled.child is None or not bundled.child.alive():
                bundled.start()

        return self._named("restart bundled store", heal)

    def _named(self, what: str, heal: Callable[[], None]) -> Callable[[], None]:
        self.report.faults.append(what)
        print(f"  fault at {time.time():.1f}: {what}", flush=True)
        return heal

    # The schedule.

    def run_faults(
        self,
        count: int,
        overlap_every: int = 3,
        after_heal: Callable[[], str] | None = None,
    ) -> None:
        """``count`` faults, one at a time, every ``overlap_every``-th overlapping the next."""
        choices = self.faults()
        made = 0
        while made < count:
            heals = [self.rng.choice(choices)()]
            made += 1
            if made < count and made % overlap_every == 0:
                time.sleep(self.rng.uniform(0.2, 1.0))
                heals.append(self.rng.choice(choices)())
                made += 1
            # Longer than the TTL, so the engine moves units and fences fire.
            time.sleep(self.rng.uniform(TTL * 1.2, TTL * 2.5))
            for heal in reversed(heals):
                heal()
            self.healed_at = time.time()
            missing = self.check_all_running(SETTLE)
            if missing:
                self._violate(
                    f"not running {SETTLE:g}s after healing {self.report.faults[-1]}: {missing}"
                    f" [{self.diagnose(missing)}]"
                )
            if after_heal is not None:
                self.report.checks += 1
                wrong = after_heal()
                if wrong:
                    self._violate(f"after healing {self.report.faults[-1]}: {wrong}")
