"""Runs etcd's own load generator, `benchmark` (etcd v3.4 tools/benchmark), against each store.

The tool is a peer nobody on this project wrote: range, put and watch as etcd's developers
measure them. It is looked for on PATH, then in ../shared/tools/ beside the repository; when
it is in neither place, the section says so and is left out.

    python -m bench.kv [--quick]            (this section runs after the aetcd figures)
    python -m bench._etcd_tool [--quick]    (this section alone)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.harness.stores import RunningStore

REPO = Path(__file__).resolve().parents[1]
TOOL_NAME = "benchmark"
RANGE_KEY = "/bench/tool/range"


def find_tool() -> str | None:
    """etcd's `benchmark`: on PATH, or in ../shared/tools/ relative to the repository."""
    found = shutil.which(TOOL_NAME)
    if found:
        return found
    candidate = REPO.parent / "shared" / "tools" / TOOL_NAME
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return None


@dataclass(frozen=True)
class Run:
    """One `benchmark` command and what its figure is called."""

    name: str
    argv: tuple[str, ...]
    count: int
    """Requests or events the run makes, for the server CPU per one of them."""


def runs(quick: bool) -> list[Run]:
    total = 5_000 if quick else 20_000
    puts = 200 if quick else 1_000
    conns = ("--conns=16", "--clients=64")
    value = ("--val-size=256",)
    return [
        Run(
            "tool put 64 clients req/s",
            (*conns, "put", "--key-size=8", "--sequential-keys", f"--total={total}", *value),
            total,
        ),
        Run(
            "tool range (linearizable) 64 clients req/s",
            (*conns, "range", RANGE_KEY, "--consistency=l", f"--total={total}"),
            total,
        ),
        Run(
            "tool range (serializable) 64 clients req/s",
            (*conns, "range", RANGE_KEY, "--consistency=s", f"--total={total}"),
            total,
        ),
        # 10 streams x 100 watchers of one key, `puts` puts at 1,000/s: puts x 1,000 events.
        # The tool panics with its default put rate of 0.
        Run(
            f"tool watch ({puts * 1000:,} events) events/s",
            ("watch", "--put-rate=1000", f"--put-total={puts}"),
            puts * 1000,
        ),
    ]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rate(output: str) -> float:
    """The last "Requests/sec" of the tool's output: for watch, events received per second."""
    found = re.findall(r"Requests/sec:\s+([0-9.]+)", output)
    if not found:
        raise RuntimeError(f"no Requests/sec in the benchmark output:\n{output[-2000:]}")
    return float(found[-1])


def run_tool(tool: str, store: RunningStore, run: Run, pid: int) -> tuple[float, float]:
    """Requests (or events) per second, and the store's CPU µs per request (or event)."""
    endpoint = store.url.split("//", 1)[1]
    cpu = _cpu_seconds(pid)
    result = subprocess.run(
        [tool, f"--endpoints={endpoint}", *run.argv],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    used = _cpu_seconds(pid) - cpu
    if result.returncode:
        raise RuntimeError(f"{' '.join(run.argv)} failed:\n{result.stderr[-2000:]}")
    return _rate(result.stdout), used * 1e6 / run.count


def measure(
    stores: dict[str, RunningStore], pids: dict[str, int], quick: bool, rounds: int
) -> dict[str, dict[str, float]] | None:
    """Every store's figures from the tool (medians of ``rounds``), or None without it."""
    tool = find_tool()
    if tool is None:
        return None
    for store in stores.values():
        _put_range_key(store)  # the range runs read one key that must exist
    figures: dict[str, dict[str, float]] = {kind: {} for kind in stores}
    for run in runs(quick):
        samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in stores}
        for _round in range(rounds):
            for kind, store in stores.items():
                samples[kind].append(run_tool(tool, store, run, pids[kind]))
        for kind, taken in samples.items():
            figures[kind][run.name] = statistics.median(rate for rate, _cpu in taken)
            label = run.name.rsplit(" ", 1)[0]
            figures[kind][f"{label} server CPU us/op"] = statistics.median(c for _r, c in taken)
    return figures


def _put_range_key(store: RunningStore) -> None:
    import asyncio

    from clustertui.backend.etcd import make_client

    async def put() -> None:
        client = make_client([store.url])
        await client.wait_ready()
        await client.put(RANGE_KEY.encode(), b"v" * 256)
        await client.close()

    asyncio.run(put())


def _pid(store: RunningStore) -> int:
    child = getattr(store, "child", None)
    assert child is not None, "the bench starts its stores as child processes"
    return int(child.pid)


def missing_note() -> str:
    return (
        f"etcd's `{TOOL_NAME}` tool is missing (looked on PATH and in "
        f"{REPO.parent / 'shared' / 'tools'}): its section is left out"
    )


def main() -> None:
    from bench.kv import print_figures
    from tests.harness.bundled import start_bundled
    from tests.harness.etcd import start_etcd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, one round")
    args = parser.parse_args()
    if find_tool() is None:
        print(missing_note())
        return
    with tempfile.TemporaryDirectory(prefix="bench-tool-") as tmp:
        stores: dict[str, RunningStore] = {}
        try:
            stores["etcd"] = start_etcd(Path(tmp) / "etcd")
            stores["bundled"] = start_bundled(Path(tmp) / "bundled")
            pids = {kind: _pid(store) for kind, store in stores.items()}
            figures = measure(stores, pids, args.quick, 1 if args.quick else 3)
        finally:
            for store in stores.values():
                store.stop()
    assert figures is not None
    print_figures(figures)


if __name__ == "__main__":
    main()
