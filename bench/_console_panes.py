"""Provides bench.console's cluster pane figures: journal ingest while following, 10,000 units.

Peers, measured in the same run:
* journal ingest: Textual's own ``Log`` widget (``write_lines`` with ``max_lines``) fed the same
  lines, already decoded: the stock way to show a stream in Textual;
* units table: Textual's ``DataTable`` holding the same 10,000 rows (one ``add_rows``).

The journal lines are ``clusterd journal -o json`` lines (the format the pane reads, made by
the journal's own formatter); they go through the pane's reader path (line splitting, JSON
parsing, batching, one repaint per batch) in a headless app of 120x36, while a key is pressed
every 20 ms and timed from post to handling.

Run: ``python -m bench.console --only panes [--quick]``.
"""

from __future__ import annotations

import asyncio
import gc
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from textual import events
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Log

from clustertui.backend.fleet.registry import ClusterState, Job, Machine, UnitState
from clustertui.backend.journal.fmt import Formatter
from clustertui.console.cluster import ClusterModel
from clustertui.console.journal_stream import MachineAccess, parse_entry
from clustertui.console.screens.journal import JournalPane
from clustertui.console.screens.units import UnitsPane
from clustertui.widgets.line_table import LineTable

SIZE = (120, 36)
TARGET_RATE = 100_000
TARGET_P99_MS = 50.0
TARGET_FIRST_MS = 200.0
TARGET_FRAME_MS = 16.0
CHUNK = 1 << 16


def rss_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / (1 << 20)


def json_lines(count: int) -> bytes:
    """``count`` lines of ``-o json`` output, as `clusterd journal` writes them."""
    formatter = Formatter("json", "5f3c9a7e0b1d4c2e8a6f4b3d2c1e0f9a")
    prefix = (
        b'"PRIORITY":"6","_SYSTEMD_UNIT":"web@8080.service","SYSLOG_IDENTIFIER":"web",'
        b'"_PID":"4242","_HOSTNAME":"core-1","_TRANSPORT":"stdout","MESSAGE":"GET /api/v1/items/'
    )
    start = int(time.time() * 1_000_000)
    records = [
        (n + 1, start + n, n, 6, 0, prefix + f'{n} 200 1532us user=alice"'.encode())
        for n in range(count)
    ]
    return formatter.many(records)  # type: ignore[arg-type]


class JournalBench(App[None]):
    def compose(self) -> ComposeResult:
        yield JournalPane(MachineAccess(), limit=100_000)

    def on_mount(self) -> None:
        # As ClusterConsole does once it is up.
        gc.freeze()

    def on_unmount(self) -> None:
        gc.unfreeze()


class LogBench(App[None]):
    def compose(self) -> ComposeResult:
        yield Log(max_lines=100_000)


async def press_every(app: App[None], stop: asyncio.Event) -> None:
    """Post a key every 20 ms; the handler records how long it waited."""
    while not stop.is_set():
        app.post_message(events.Key("down", None))
        app.bench_posted = time.perf_counter()  # type: ignore[attr-defined]
        await asyncio.sleep(0.02)


async def journal_ingest(total: int) -> dict[str, float]:
    """Our pane: lines through split, parse, batch and repaint while following."""
    data = json_lines(min(total, 200_000))
    app = JournalBench()
    latencies: list[float] = []
    rss: dict[int, float] = {}
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(JournalPane)
        pane.title = "web@8080.service on core-1"
        view = pane.view
        view.focus()
        original = view.action_scroll_by

        def timed(delta: int) -> None:
            latencies.append(time.perf_counter() - app.bench_posted)  # type: ignore[attr-defined]
            original(delta)

        view.action_scroll_by = timed  # type: ignore[method-assign]
        stop = asyncio.Event()
        presser = asyncio.create_task(press_every(app, stop))
        started = time.perf_counter()
        fed = 0
        partial = b""
        while fed < total:
            for offset in range(0, len(data), CHUNK):
                chunk = partial + data[offset : offset + CHUNK]
                lines = chunk.split(b"\n")
                partial = lines.pop()
                pane.receive([parse_entry(line, "core-1") for line in lines])
                fed += len(lines)
                if fed % 250_000 < len(lines):
                    rss[fed] = rss_mib()
                # A reader yields to the loop after every read, as the real one does.
                await asyncio.sleep(0)
                if fed >= total:
                    break
        await pilot.pause(0.1)
        elapsed = time.perf_counter() - started
        stop.set()
        await presser
        assert view.total >= total, (view.total, total)
        assert len(view.entries) == 100_000
    p99 = statistics.quantiles(latencies, n=100)[98] * 1000 if len(latencies) > 2 else 0.0
    return {
        "rate": total / elapsed,
        "p99": p99,
        "keys": len(latencies),
        **{f"rss@{k}": v for k, v in rss.items()},
    }


async def log_ingest(total: int) -> float:
    """The peer: Textual's Log widget, fed the same lines already as text."""
    data = json_lines(min(total, 200_000)).decode().splitlines()
    app = LogBench()
    async with app.run_test(size=SIZE) as pilot:
        log = app.query_one(Log)
        started = time.perf_counter()
        fed = 0
        while fed < total:
            for offset in range(0, len(data), 500):
                log.write_lines(data[offset : offset + 500])
                fed += 500
                await asyncio.sleep(0)
                if fed >= total:
                    break
        await pilot.pause(0.1)
        elapsed = time.perf_counter() - started
    return total / elapsed


# -- units ---------------------------------------------------------------------------------


def big_model(units: int, machines: int) -> ClusterModel:
    state = ClusterState()
    ids = [f"{n:08x}" + "0" * 24 for n in range(machines)]
    for n, machine_id in enumerate(ids):
        state.machines[machine_id] = Machine(machine_id, f"10.0.{n // 250}.{n % 250 + 1}")
    for n in range(units):
        name = f"app-{n:05d}.service"
        target = ids[n % machines]
        state.jobs[name] = Job(name, unit_hash="ab" * 20, target_state="launched", target=target)
        active = ("active", "running") if n % 7 else ("failed", "failed")
        state.states[name] = {target: UnitState("loaded", *active, machine_id=target)}
    model = ClusterModel()
    model.fleet = state
    model.loaded.set()
    return model


class UnitsBench(App[None]):
    def __init__(self, model: ClusterModel) -> None:
        super().__init__()
        self.model = model

    def compose(self) -> ComposeResult:
        yield UnitsPane(self.model, None, MachineAccess())

    def on_mount(self) -> None:
        gc.freeze()

    def on_unmount(self) -> None:
        gc.unfreeze()


class DataTableBench(App[None]):
    def compose(self) -> ComposeResult:
        yield DataTable()


def frame(render_line: Callable[[int], object], height: int) -> None:
    for y in range(height):
        render_line(y)


async def units_table(units: int, scrolls: int) -> dict[str, float]:
    model = big_model(units, max(1, units // 100))
    app = UnitsBench(model)
    async with app.run_test(size=SIZE) as pilot:
        pane = app.query_one(UnitsPane)
        table = pane.query_one(LineTable)
        started = time.perf_counter()
        pane.update_from_model()
        frame(table.render_line, table.size.height)
        first = time.perf_counter() - started
        await pilot.pause()
        assert len(table.view) == units
        frames = []
        for step in range(scrolls):
            started = time.perf_counter()
            table.action_page(1 if step % 40 < 20 else -1)
            frame(table.render_line, table.size.height)
            frames.append(time.perf_counter() - started)
    return {
        "first": first * 1000,
        "frame_p50": statistics.median(frames) * 1000,
        "frame_p99": statistics.quantiles(frames, n=100)[98] * 1000,
    }


async def data_table(units: int, scrolls: int) -> dict[str, float]:
    model = big_model(units, max(1, units // 100))
    rows = [
        (name, job.target[:8], job.target_state, "launched", s.active_state, s.sub_state)
        for name, job in model.fleet.jobs.items()
        for s in model.fleet.states[name].values()
    ]
    app = DataTableBench()
    async with app.run_test(size=SIZE) as pilot:
        table = app.query_one(DataTable)
        started = time.perf_counter()
        table.add_columns("UNIT", "MACHINE", "DSTATE", "STATE", "ACTIVE", "SUB")
        table.add_rows(rows)
        table._update_dimensions(table._new_rows)
        frame(table.render_line, table.size.height)
        first = time.perf_counter() - started
        await pilot.pause()
        frames = []
        for step in range(scrolls):
            started = time.perf_counter()
            table.scroll_to(y=(step % 40) * table.size.height, animate=False, immediate=True)
            frame(table.render_line, table.size.height)
            frames.append(time.perf_counter() - started)
    return {
        "first": first * 1000,
        "frame_p50": statistics.median(frames) * 1000,
        "frame_p99": statistics.quantiles(frames, n=100)[98] * 1000,
    }


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


async def run(quick: bool) -> int:
    total = 300_000 if quick else 1_000_000
    print(f"journal ingest while following: {total:,} lines, buffer 100,000, keys every 20 ms")
    ours = await journal_ingest(total)
    peer = await log_ingest(min(total, 300_000))
    print(
        f"  journal pane      {ours['rate']:>12,.0f} lines/s   (target >= {TARGET_RATE:,}) "
        f"{verdict(ours['rate'] >= TARGET_RATE)}"
    )
    print(f"  textual Log peer  {peer:>12,.0f} lines/s   ratio x{ours['rate'] / peer:.2f}")
    print(
        f"  input latency p99 {ours['p99']:>9.1f} ms over {ours['keys']:.0f} keys   "
        f"(target < {TARGET_P99_MS:.0f} ms) {verdict(ours['p99'] < TARGET_P99_MS)}"
    )
    marks = sorted((k for k in ours if k.startswith("rss@")), key=lambda k: int(k[4:]))
    print(
        "  memory (RSS)      "
        + ", ".join(f"{int(k[4:]):,} lines: {ours[k]:.0f} MiB" for k in marks)
    )
    units = 10_000
    scrolls = 100 if quick else 400
    print(f"units pane: {units:,} units on {units // 100} machines, {scrolls} page scrolls")
    table = await units_table(units, scrolls)
    peer_table = await data_table(units, scrolls)
    print(
        f"  first render      {table['first']:>9.1f} ms   (target < {TARGET_FIRST_MS:.0f} ms) "
        f"{verdict(table['first'] < TARGET_FIRST_MS)}; DataTable {peer_table['first']:.1f} ms"
    )
    print(
        f"  scroll frame p50  {table['frame_p50']:>9.2f} ms   DataTable "
        f"{peer_table['frame_p50']:.2f} ms"
    )
    print(
        f"  scroll frame p99  {table['frame_p99']:>9.2f} ms   (target < {TARGET_FRAME_MS:.0f} ms) "
        f"{verdict(table['frame_p99'] < TARGET_FRAME_MS)}; DataTable "
        f"{peer_table['frame_p99']:.2f} ms"
    )
    return 0
