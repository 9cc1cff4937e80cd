"""Measures the console headless: first frame on 100k keys, a 10k expand, a put storm, memory.

`python -m bench.console [--quick] [--store bundled|etcd] [--only keys|panes]`. The peer
measured in the same run is etcdctl reading the same keys (`get --prefix --keys-only`), what
a console that loads everything at once would have to wait for. Then the cluster panes
(bench/_console_panes.py): journal ingest while following and a units pane of 10,000 units.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aetcd import rpc
from textual import events
from textual.geometry import Region
from textual.strip import Strip

from bench import _console_panes
from clustertui.backend.etcd import EtcdClient, make_client
from clustertui.console.app import ClusterConsole
from clustertui.console.config import ClusterSettings
from clustertui.console.session import Session
from clustertui.widgets.key_tree import KeyTree

REPO = Path(__file__).resolve().parents[1]
SIZE = (120, 36)
TXN = 100
STORM_TXN = 10


@dataclass(frozen=True)
class Shape:
    """How big a run is."""

    keys: int
    big: int
    rate: int
    seconds: float


FULL = Shape(keys=100_000, big=10_000, rate=5_000, seconds=10.0)
QUICK = Shape(keys=20_000, big=5_000, rate=2_000, seconds=3.0)


def start_store(kind: str, root: Path) -> tuple[subprocess.Popen[bytes], str]:
    from tests.harness.procs import find_tool, free_port, port_open

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    if kind == "etcd":
        peer = f"http://127.0.0.1:{free_port()}"
        argv = [
            find_tool("etcd"), "--data-dir", str(root / "etcd"),
            "--listen-client-urls", url, "--advertise-client-urls", url,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"default={peer}", "--log-level", "error", "--logger", "zap",
            "--quota-backend-bytes", str(4 * 1024**3),
        ]  # fmt: skip
    else:
        argv = [sys.executable, "-m", "clustertui.backend.daemon", "kv",
                "--data-dir", str(root / "kv"), "--listen-client-urls", url]  # fmt: skip
    log = (root / "store.log").open("ab")
    process = subprocess.Popen(argv, stdout=log, stderr=log, cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + 30
    while not port_open(port):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"the {kind} store did not start; see {root / 'store.log'}")
        time.sleep(0.05)
    return process, url


async def fill(client: EtcdClient, shape: Shape) -> None:
    """``big`` keys under /big/, the rest spread over 1,000-key directories."""
    keys = [f"/big/k{n:06d}".encode() for n in range(shape.big)]
    rest = shape.keys - shape.big
    keys += [f"/dir{n // 1000:03d}/k{n % 1000:04d}".encode() for n in range(rest)]
    await client.connect()
    for at in range(0, len(keys), TXN):
        ops = [
            rpc.RequestOp(request_put=rpc.PutRequest(key=key, value=b'{"v": 1}'))
            for key in keys[at : at + TXN]
        ]
        await client.kvstub.Txn(rpc.TxnRequest(success=ops), metadata=client.metadata)


def etcdctl_keys(url: str, prefix: str) -> float:
    etcdctl = shutil.which("etcdctl")
    if etcdctl is None:
        return float("nan")
    started = time.perf_counter()
    subprocess.run(
        [etcdctl, "--endpoints", url, "get", prefix, "--prefix", "--keys-only"],
        check=True,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    return time.perf_counter() - started


async def storm_writer(url: str, rate: int, seconds: float, big: int) -> None:
    """Put at ``rate`` keys per second for ``seconds``: updates and new keys under /big/.

    Puts go ten to a transaction, as a busy writer's would, so one Python process can
    keep the rate on a loaded machine; the watch still sees one event per key.
    """
    client = make_client([url])
    await client.connect()
    started = time.monotonic()
    sent = 0
    calls: list[asyncio.Future[object]] = []
    failed: list[int] = []
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(elapsed * rate) - sent
        while due >= STORM_TXN or (due > 0 and elapsed > seconds - 0.01):
            count = min(due, STORM_TXN)
            # A transaction may name a key once, hence distinct keys per transaction.
            puts = [
                rpc.RequestOp(
                    request_put=rpc.PutRequest(
                        key=f"/big/k{number:06d}".encode(), value=str(sent).encode()
                    )
                )
                for number in random.sample(range(big * 2), count)
            ]
            call = asyncio.ensure_future(
                client.kvstub.Txn(rpc.TxnRequest(success=puts), metadata=client.metadata)
            )
            call.add_done_callback(
                lambda done, n=count: failed.append(n) if done.exception() else None
            )
            calls.append(call)
            sent += count
            due -= count
        calls = [call for call in calls if not call.done()]
        await asyncio.sleep(0.005)
    await asyncio.gather(*calls, return_exceptions=True)
    took = time.monotonic() - started
    print(f"{sent - sum(failed)} {took:.3f}", flush=True)
    await client.close()


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def measure(url: str, shape: Shape) -> dict[str, object]:
    from screenshots.driving import wait_for

    figures: dict[str, object] = {}
    session = Session(ClusterSettings(name="bench", endpoints=(url,)))
    app = ClusterConsole(session)
    # The first frame is the first paint of the tree with keys in it: the moment a person
    # sees them. Waiting for the app to go idle instead would also wait for the rest of the
    # listing, which fills in while the first keys are already on screen.
    drawn: list[float] = []
    paint = KeyTree.render_lines

    def timed_paint(tree: KeyTree, crop: Region) -> list[Strip]:
        if not drawn and len(tree.visible_paths) > 1:
            drawn.append(time.perf_counter())
        return paint(tree, crop)

    KeyTree.render_lines = timed_paint  # type: ignore[method-assign]
    started = time.perf_counter()
    async with app.run_test(size=SIZE) as pilot:
        figures["app_up_s"] = time.perf_counter() - started
        pane = app.keys_pane
        tree = pane.key_tree
        await wait_for(pilot, lambda: bool(drawn), 60)
        figures["first_frame_s"] = drawn[0] - started
        KeyTree.render_lines = paint  # type: ignore[method-assign]
        await wait_for(pilot, lambda: pane.loaded.is_set(), 60)
        await pilot.pause()
        figures["listed_s"] = time.perf_counter() - started
        started = time.perf_counter()
        tree.open_directory(b"/big/")
        await wait_for(pilot, lambda: len(tree.children_of(b"/big/")) == shape.big, 60)
        await wait_for(pilot, lambda: pane._loading == 0, 60)
        await pilot.pause()
        figures["expand_s"] = time.perf_counter() - started
        tree.select_path(b"/big/")
        tree.focus()
        await pilot.pause()

        writer = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.console", "--storm-writer", url,
            str(shape.rate), str(shape.seconds), str(shape.big),
            cwd=REPO, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        latencies: list[float] = []
        direction = "down"
        while writer.returncode is None:
            before = tree.cursor
            pressed = time.perf_counter()
            # As a terminal would: pilot.press also waits for the app to go idle,
            # which it never does in a storm, and that wait is not input latency.
            key = events.Key(direction, None)
            key.set_sender(app)
            app._driver.send_message(key)  # type: ignore[union-attr]
            # Yielding one turn at a time is the point: the loop sees the move as soon as
            # the app has handled the key, whatever else it is busy with.
            while tree.cursor == before and time.perf_counter() - pressed < 5:  # noqa: ASYNC110
                await asyncio.sleep(0)
            latencies.append(time.perf_counter() - pressed)
            direction = "up" if direction == "down" else "down"
            try:
                await asyncio.wait_for(writer.wait(), 0.05)
            except TimeoutError:
                pass
        output = (await writer.stdout.read()).decode().split() if writer.stdout else []
        sent, took = int(output[0]), float(output[1])
        figures["storm_puts"] = sent
        figures["storm_rate"] = sent / took
        latencies.sort()
        figures["input_p50_ms"] = statistics.median(latencies) * 1000
        figures["input_p99_ms"] = latencies[int(len(latencies) * 0.99) - 1] * 1000
        figures["input_samples"] = len(latencies)

        revision = await session.client.current_revision()
        await wait_for(pilot, lambda: pane.last_revision >= revision, 60)
        await pilot.pause(0.3)
        response = await session.client.kvstub.Range(
            rpc.RangeRequest(key=b"/big/", range_end=b"/big0", keys_only=True),
            metadata=session.client.metadata,
        )
        expected = [kv.key for kv in response.kvs]
        model = [child.path for child in tree.children_of(b"/big/")]
        rows = [path for path in tree.visible_paths if path.startswith(b"/big/")][1:]
        figures["tree_correct"] = model == expected and rows == expected
        figures["rss_mb"] = rss_mb()
    await session.close()
    return figures


def report(kind: str, shape: Shape, figures: dict[str, object], peers: dict[str, float]) -> None:
    first = float(figures["first_frame_s"])  # type: ignore[arg-type]
    expand = float(figures["expand_s"])  # type: ignore[arg-type]
    print(f"store: {kind}, {shape.keys:,} keys, /big/ has {shape.big:,} children")
    print(
        f"  first keys shown {first * 1000:8.0f} ms   (target < 500)   "
        f"etcdctl get all keys {peers['all'] * 1000:.0f} ms, ratio {first / peers['all']:.2f}"
    )
    up = float(figures["app_up_s"])  # type: ignore[arg-type]
    listed = float(figures["listed_s"])  # type: ignore[arg-type]
    print(f"    of which app start-up (Textual, before any request) {up * 1000:.0f} ms")
    print(f"  fully listed     {listed * 1000:8.0f} ms   (the tree fills while the user reads)")
    print(
        f"  expand /big/     {expand * 1000:8.0f} ms   (target < 300)   "
        f"etcdctl get /big/ {peers['big'] * 1000:.0f} ms, ratio {expand / peers['big']:.2f}"
    )
    print(
        f"  storm            {figures['storm_puts']:,} puts at {figures['storm_rate']:.0f}/s "
        f"(asked {shape.rate}/s for {shape.seconds:.0f} s)"
    )
    print(
        f"  input latency    p50 {figures['input_p50_ms']:.1f} ms, p99 "
        f"{figures['input_p99_ms']:.1f} ms over {figures['input_samples']} presses "
        "(target p99 < 100)"
    )
    print(f"  tree correct     {figures['tree_correct']}")
    print(f"  memory (max RSS) {figures['rss_mb']:.0f} MB (target < 200)")


async def run(kind: str, shape: Shape) -> bool:
    with tempfile.TemporaryDirectory(prefix="bench-console-") as root:
        process, url = start_store(kind, Path(root))
        try:
            client = make_client([url])
            await client.wait_ready()
            await fill(client, shape)
            await client.close()
            peers = {"all": etcdctl_keys(url, "/"), "big": etcdctl_keys(url, "/big/")}
            figures = await measure(url, shape)
            report(kind, shape, figures, peers)
            return bool(figures["tree_correct"])
        finally:
            process.terminate()
            process.wait(timeout=20)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--store", choices=["bundled", "etcd"], default="etcd")
    parser.add_argument("--storm-writer", nargs=4, metavar=("URL", "RATE", "SECONDS", "BIG"))
    parser.add_argument(
        "--only", choices=["keys", "panes"], help="only the key pane or only the cluster panes"
    )
    args = parser.parse_args()
    if args.storm_writer:
        url, rate, seconds, big = args.storm_writer
        asyncio.run(storm_writer(url, int(rate), float(seconds), int(big)))
        return 0
    shape = QUICK if args.quick else FULL
    ok = True
    if args.only != "panes":
        ok = asyncio.run(run(args.store, shape))
    if args.only != "keys":
        print(flush=True)
        asyncio.run(_console_panes.run(args.quick))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
