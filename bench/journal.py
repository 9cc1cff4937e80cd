"""Measures the journal: write rate, `-o json -n all` read rate and follow latency, beside peers."""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clustertui.backend.journal.writer import JournalWriter

REPO = Path(__file__).resolve().parents[1]
LINE = b"GET /api/v1/items/%d 200 1532us user=alice request_id=5f3c9a7e trace=ok"
PEERS = """\
Peers, measured in the same run:
* a plain file append (writes) and ``tail -f`` (follow latency): the floor, no structure;
* journald + journalctl (systemd-cat in, ``journalctl -o json`` and ``journalctl -f`` out).
  This machine's own journal is used when it has one; otherwise, when we are root and
  ``unshare`` and systemd-journald exist, a private journald is started in a mount
  namespace (tmpfs /run and /var/log/journal, rate limits off). Else the peer is skipped
  and the output says so.

Run: ``python -m bench.journal [--quick]``.
"""
TARGET_WRITE = 200_000
TARGET_READ = 300_000
TARGET_P99_MS = 50.0
JOURNALD_CONF = """[Journal]
Storage=volatile
RateLimitIntervalSec=0
RateLimitBurst=0
RuntimeMaxUse=4G
RuntimeMaxFileSize=512M
ForwardToSyslog=no
ForwardToWall=no
ReadKMsg=no
"""


def rate(count: int, seconds: float) -> str:
    return f"{count / seconds:>12,.0f} lines/s"


def ratio(ours: float, theirs: float | None) -> str:
    return f"x{ours / theirs:.2f}" if theirs else "n/a"


# -- writes --------------------------------------------------------------------------------


def write_ours(data_dir: Path, count: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process: the caller and the flusher thread)."""
    started = time.perf_counter()
    cpu = time.process_time()
    writer = JournalWriter(data_dir, hostname="bench", machine_id="0" * 32, max_bytes=4 << 30)
    line = writer.line
    for i in range(count):
        line(LINE % i, unit="web.service", identifier="web", pid=4242)
    writer.close()
    return time.perf_counter() - started, time.process_time() - cpu


def write_plain_file(path: Path, count: int) -> float:
    started = time.perf_counter()
    with path.open("ab") as f:
        for i in range(count):
            f.write(LINE % i + b"\n")
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - started


# -- reads ---------------------------------------------------------------------------------


def read_json(argv: list[str]) -> tuple[float, int, float]:
    """Run a reader with stdout to a pipe we drain; (wall seconds, lines, its CPU seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None
    lines = 0
    while chunk := proc.stdout.read(1 << 20):
        lines += chunk.count(b"\n")
    proc.wait()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, lines, cpu


def clusterd(*args: str) -> list[str]:
    return [sys.executable, "-m", "clustertui.backend.daemon", *args]


# -- follow latency ------------------------------------------------------------------------


def follow_latency(
    reader_argv: list[str], emit: Callable[[bytes], None], samples: int, *, interval: float
) -> list[float]:
    """Latencies (ms) from ``emit(line)`` until ``reader_argv`` prints it."""
    reader = subprocess.Popen(reader_argv, stdout=subprocess.PIPE, cwd=REPO)
    assert reader.stdout is not None
    stdout = reader.stdout
    sent: dict[int, float] = {}
    seen: dict[int, float] = {}
    done = threading.Event()

    def collect() -> None:
        buffer = b""
        fd = stdout.fileno()
        while not done.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            now = time.perf_counter()
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                if line.startswith(b"latency-probe "):
                    seen[int(line.split()[1])] = now

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()
    try:
        # Let the reader start and print its backlog before probing.
        emit(b"latency-probe -1 warm-up")
        deadline = time.monotonic() + 15
        while -1 not in seen and time.monotonic() < deadline:
            emit(b"latency-probe -1 warm-up")
            time.sleep(0.1)
        for i in range(samples):
            sent[i] = time.perf_counter()
            emit(b"latency-probe %d" % i)
            time.sleep(interval)
        deadline = time.monotonic() + 10
        while len(seen) < samples + 1 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        done.set()
        reader.terminate()
        reader.wait()
        thread.join(2)
    return [(seen[i] - sent[i]) * 1000 for i in sent if i in seen]


def percentiles(values: list[float]) -> str:
    if not values:
        return "no lines arrived"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"p50 {statistics.median(ordered):6.2f} ms  p99 {p99:6.2f} ms  "
        f"max {ordered[-1]:6.2f} ms  ({len(values)} lines)"
    )


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("inf")


# -- the journald peer ---------------------------------------------------------------------


def journald_peer(count: int, samples: int, interval: float) -> dict[str, Any]:
    """Run inside a private mount namespace: a journald of our own, fed and read."""
    for target in ("/run", "/var/log/journal"):
        Path(target).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", target], check=True)
    conf = Path("/run/bench-journald.conf")
    conf.write_text(JOURNALD_CONF)
    subprocess.run(["mount", "--bind", str(conf), "/etc/systemd/journald.conf"], check=True)
    journald = subprocess.Popen(["/lib/systemd/systemd-journald"], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not Path("/run/systemd/journal/stdout").exists():
            if time.monotonic() > deadline:
                return {"error": "journald did not start"}
            time.sleep(0.05)
        started = time.perf_counter()
        cat = subprocess.Popen(["systemd-cat", "-t", "web"], stdin=subprocess.PIPE)
        assert cat.stdin is not None
        batch = []
        for i in range(count):
            batch.append(LINE % i + b"\n")
            if len(batch) == 10_000:
                cat.stdin.write(b"".join(batch))
                batch = []
        cat.stdin.write(b"".join(batch))
        cat.stdin.close()
        cat.wait()
        subprocess.run(["journalctl", "--sync"], check=False)
        write_seconds = time.perf_counter() - started
        read_seconds, read_lines, _ = read_json(
            ["journalctl", "-o", "json", "-n", "all", "--no-pager", "-t", "web"]
        )
        probe = subprocess.Popen(["systemd-cat", "-t", "probe"], stdin=subprocess.PIPE)
        assert probe.stdin is not None
        probe_in = probe.stdin

        def emit(line: bytes) -> None:
            probe_in.write(line + b"\n")
            probe_in.flush()

        latencies = follow_latency(
            ["journalctl", "-f", "-o", "cat", "-n", "0", "-t", "probe", "--no-pager"],
            emit,
            samples,
            interval=interval,
        )
        probe.stdin.close()
        probe.wait()
        return {
            "source": "a private journald",
            "write_seconds": write_seconds,
            "read_seconds": read_seconds,
            "read_lines": read_lines,
            "latencies": latencies,
        }
    finally:
        journald.terminate()
        journald.wait()


def run_journald_peer(count: int, samples: int, interval: float) -> dict[str, Any] | str:
    """journald's figures, or why there are none."""
    if not shutil.which("journalctl"):
        return "journalctl is not installed"
    own = subprocess.run(["journalctl", "-n", "1", "-q", "--no-pager"], capture_output=True)
    if own.stdout.strip():
        # Its own journal, as it is: read it, but do not flood it with bench lines.
        read_seconds, read_lines, _ = read_json(["journalctl", "-o", "json", "-n", "all"])
        return {"read_seconds": read_seconds, "read_lines": read_lines, "source": "own journal"}
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return "no journal on this machine, and a private journald needs root and unshare"
    if not Path("/lib/systemd/systemd-journald").exists():
        return "no journal on this machine, and systemd-journald is not installed"
    result = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            sys.executable,
            "-m",
            "bench.journal",
            "--peer",
            str(count),
            "--samples",
            str(samples),
            "--interval",
            str(interval),
        ],
        cwd=REPO,
        capture_output=True,
        timeout=1800,
    )
    if result.returncode != 0:
        return f"the private journald failed: {result.stderr.decode(errors='replace')[-300:]}"
    found: dict[str, Any] = json.loads(result.stdout.decode().strip().splitlines()[-1])
    return found


# -- filtered questions ------------------------------------------------------------------

QUERY_UNITS = 50
JOURNAL_REMOTE = "/lib/systemd/systemd-journal-remote"
TARGET_SMALL_RATIO = 1.5
TARGET_JOURNALCTL_RATIO = 10.0


def write_query_journal(data_dir: Path, count: int) -> tuple[float, float]:
    """50 busy units, one rare unit with 10 entries spread over the journal, priorities
    mixed (an error every 97 lines, a warning every 13); (wall, CPU) seconds."""
    started = time.perf_counter()
    cpu = time.process_time()
    rare_every = max(count // 10, 1)
    writer = JournalWriter(data_dir, hostname="bench", machine_id="0" * 32, max_bytes=4 << 30)
    line = writer.line
    for i in range(count):
        if i % rare_every == rare_every // 2:
            unit, identifier = "rare.service", "rare"
        else:
            unit, identifier = f"web{i % QUERY_UNITS}.service", "web"
        priority = 3 if i % 97 == 0 else (4 if i % 13 == 0 else 6)
        line(
            LINE % i,
            unit=unit,
            identifier=identifier,
            pid=1000 + i % QUERY_UNITS,
            priority=priority,
        )
    writer.close()
    return time.perf_counter() - started, time.process_time() - cpu


AS_INSTALLED = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
"""The environment the questions run in: an installed clusterd runs from byte-compiled modules
(pip compiles them at install), so the timed runs may write and use ``__pycache__`` even where
the shell that started the bench says not to (this build machine sets
PYTHONDONTWRITEBYTECODE=1, which made every run compile our modules again: ~30 ms of CPU)."""


def timed(argv: list[str], runs: int) -> tuple[float, float]:
    """Median wall and median CPU (user + system) seconds of ``runs`` runs of ``argv``, after
    one run that is not counted (it compiles what an install would have compiled).

    On a machine shared with other work the wall time mostly measures the others; the CPU
    time is what the question costs."""
    subprocess.run(argv, cwd=REPO, capture_output=True, check=False, env=AS_INSTALLED)
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(argv, cwd=REPO, capture_output=True, check=False, env=AS_INSTALLED)
        walls.append(time.perf_counter() - started)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def middle_entry(data_dir: Path) -> dict[str, Any]:
    """The entry halfway through our journal, as ``-o json`` shows it."""
    out = subprocess.run(
        clusterd("journal", "--data-dir", str(data_dir), "-o", "json", "-n", "all"),
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.splitlines()
    return dict(json.loads(out[len(out) // 2]))


def to_journal_files(data_dir: Path, target: Path) -> list[str]:
    """Our entries in journald journal files, through `-o export` and systemd-journal-remote,
    and the ``--file`` arguments that make journalctl read all of them.

    systemd-journal-remote starts a new file whenever one's header limits are reached
    (every ~130,000 of these entries), keeping the older ones beside it as
    ``NAME@….journal``: journalctl reading ``target`` alone would see the newest only."""
    target.parent.mkdir(parents=True, exist_ok=True)
    export = subprocess.Popen(
        clusterd("journal", "--data-dir", str(data_dir), "-o", "export", "-n", "all"),
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    subprocess.run(
        [JOURNAL_REMOTE, "-o", str(target), "-"],
        stdin=export.stdout,
        check=True,
        capture_output=True,
    )
    assert export.stdout is not None
    export.stdout.close()
    export.wait()
    written = sorted(target.parent.glob(target.stem + "*.journal"))
    assert target in written
    return [argument for path in written for argument in ("--file", str(path))]


def query_table(root: Path, count: int, runs: int) -> list[str]:
    """The filtered questions on ``count`` entries, beside a 3,000-entry journal and
    journalctl reading the same entries; lines of a table and a verdict per target."""
    big, small = root / "q-big", root / "q-small"
    write_query_journal(big, count)
    write_query_journal(small, 3000)
    middle = {name: middle_entry(d) for name, d in (("big", big), ("small", small))}
    have_journalctl = shutil.which("journalctl") and Path(JOURNAL_REMOTE).exists()
    files = {}
    if have_journalctl:
        for name, d in (("big", big), ("small", small)):
            files[name] = to_journal_files(d, root / f"remote-{name}" / "all.journal")
            seen = subprocess.run(
                ["journalctl", *files[name], "-q", "-o", "cat"], capture_output=True, check=True
            ).stdout.count(b"\n")
            assert seen == (count if name == "big" else 3000), f"journalctl sees {seen} entries"

    def journalctl_cursor(name: str) -> str:
        seconds = int(middle[name]["__REALTIME_TIMESTAMP"]) / 1e6
        out = subprocess.run(
            [
                "journalctl",
                *files[name],
                "-S",
                f"@{seconds:.6f}",
                "-o",
                "json",
                "-n",
                "all",
            ],
            capture_output=True,
        ).stdout.split(b"\n", 1)[0]
        return str(json.loads(out)["__CURSOR"])

    grep = "items/99999[0-9]"
    questions: list[tuple[str, list[str], bool]] = [
        ("-u rare -n 10", ["-u", "rare", "-n", "10"], True),
        ("-u web7 -n 10", ["-u", "web7", "-n", "10"], True),
        ("-p err -n 10", ["-p", "err", "-n", "10"], True),
        ("-S <middle> -n 10", ["-S", "@MIDDLE", "-n", "10"], True),
        ("--after-cursor <middle> -n 10", ["--after-cursor", "CURSOR", "-n", "10"], True),
        ("-u web7 -p err -r -n 10", ["-u", "web7", "-p", "err", "-r", "-n", "10"], True),
        (f"-g '{grep}'", ["-g", grep], False),
        ("-g alice -n 10 (every entry)", ["-g", "alice", "-n", "10"], True),
        ("-n 1 (start-up)", ["-n", "1"], False),
    ]
    bare, bare_cpu = timed([sys.executable, "-c", "pass"], runs)
    lines = [
        f"(medians of {runs} runs, start-up included, as wall/CPU ms; python -c pass: "
        f"{bare * 1000:.0f}/{bare_cpu * 1000:.0f} ms; ratios and verdicts on CPU time)",
        f"{'question':30} {count:>11,} {'3,000':>11} {'ratio':>6}  {'journalctl':>11} "
        f"{'ours/it':>7}",
    ]
    verdicts = []
    for title, flags, filtered in questions:
        measured: dict[str, float] = {}
        walls: dict[str, float] = {}
        for name, d in (("big", big), ("small", small)):
            seconds = int(middle[name]["__REALTIME_TIMESTAMP"]) / 1e6
            ours = [
                f"@{seconds:.6f}"
                if f == "@MIDDLE"
                else (middle[name]["__CURSOR"] if f == "CURSOR" else f)
                for f in flags
            ]
            walls[name], measured[name] = timed(
                clusterd("journal", "--data-dir", str(d), "-q", *ours), runs
            )
            if name == "big" and have_journalctl:
                theirs = [
                    f"@{seconds:.6f}"
                    if f == "@MIDDLE"
                    else (journalctl_cursor(name) if f == "CURSOR" else f)
                    for f in flags
                ]
                walls["journalctl"], measured["journalctl"] = timed(
                    ["journalctl", *files[name], "--no-pager", "-q", *theirs], runs
                )
        peer = measured.get("journalctl")
        ratio_small = measured["big"] / measured["small"]
        shown = {name: f"{walls[name] * 1000:.0f}/{measured[name] * 1000:.0f}" for name in walls}
        lines.append(
            f"{title:30} {shown['big']:>11} {shown['small']:>11} {ratio_small:>6.2f}  "
            + (f"{shown['journalctl']:>11} {measured['big'] / peer:>7.2f}" if peer else "    n/a")
        )
        if filtered:
            verdicts.append(
                (
                    f"{title}: within {TARGET_SMALL_RATIO}x of 3,000 entries",
                    ratio_small <= TARGET_SMALL_RATIO,
                )
            )
            if peer:
                verdicts.append(
                    (
                        f"{title}: within {TARGET_JOURNALCTL_RATIO:.0f}x of journalctl",
                        measured["big"] <= TARGET_JOURNALCTL_RATIO * peer,
                    )
                )
        elif title.startswith("-g") and peer:
            verdicts.append((f"{title}: no slower than journalctl", measured["big"] <= peer))
    lines.append("")
    lines += [f"  {'PASS' if ok else 'MISS':10} {name}" for name, ok in verdicts]
    return lines


# -- main ----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.journal",
        description=__doc__,
        epilog=PEERS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="200,000 entries, fewer probes")
    parser.add_argument("--queries", action="store_true", help="only the filtered questions' table")
    parser.add_argument("--runs", type=int, default=5, help="runs per question (median)")
    parser.add_argument("--peer", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=0.005, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer is not None:
        print(json.dumps(journald_peer(args.peer, args.samples, args.interval)))
        return 0

    count = 200_000 if args.quick else 1_000_000
    samples = 200 if args.quick else 1000
    interval = 0.005
    if args.queries:
        print(f"filtered questions, {count:,} entries; load average {os.getloadavg()[0]:.1f}")
        with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
            for line in query_table(Path(tmp), count, args.runs):
                print(line, flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
        return 0
    print(
        f"journal benchmark: {count:,} entries, "
        f"{samples} follow probes {interval * 1000:.0f} ms apart"
    )
    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the start\n",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="bench-journal-") as tmp:
        root = Path(tmp)
        ours_write, ours_write_cpu = write_ours(root / "node", count)
        plain_write = write_plain_file(root / "plain.log", count)
        size = sum(p.stat().st_size for p in (root / "node" / "journal").glob("*.journal"))
        index_size = sum(p.stat().st_size for p in (root / "node" / "journal").glob("*.idx"))

        read_seconds, read_lines, read_cpu = read_json(
            clusterd("journal", "--data-dir", str(root / "node"), "-o", "json", "-n", "all")
        )
        assert read_lines == count, f"read {read_lines} of {count} entries"

        follow_dir = root / "follow"
        writer = JournalWriter(follow_dir, hostname="bench", machine_id="0" * 32)

        def emit_ours(line: bytes) -> None:
            writer.line(line, unit="probe.service", identifier="probe", pid=1)

        ours_latency = follow_latency(
            clusterd("journal", "--data-dir", str(follow_dir), "-f", "-o", "cat"),
            emit_ours,
            samples,
            interval=interval,
        )
        writer.close()

        tail_path = root / "tail.log"
        tail_path.touch()
        with tail_path.open("ab", buffering=0) as tail_file:

            def emit_tail(line: bytes) -> None:
                tail_file.write(line + b"\n")

            tail_latency = follow_latency(
                ["tail", "-n", "0", "-f", str(tail_path)],
                emit_tail,
                samples,
                interval=interval,
            )

    peer = run_journald_peer(count, samples, interval)

    journald = peer if isinstance(peer, dict) else {}
    print(
        f"write (JournalWriter.line; {size / count:.0f} bytes per entry on disk, "
        f"and {index_size / count:.0f} in the indexes)"
    )
    print(
        f"  ours                   {rate(count, ours_write)}   "
        f"({rate(count, ours_write_cpu)} of CPU)"
    )
    print(
        f"  plain file append      {rate(count, plain_write)}   "
        f"ours/it {ratio(plain_write, ours_write)}"
    )
    if "write_seconds" in journald:
        journald_write = float(journald["write_seconds"])
        print(
            f"  journald, systemd-cat  {rate(count, journald_write)}   "
            f"ours/it {ratio(journald_write, ours_write)}"
        )
    print("\nread (-o json -n all, into a pipe)")
    print(
        f"  ours                   {rate(count, read_seconds)}   ({rate(count, read_cpu)} of CPU)"
    )
    if journald.get("read_lines"):
        journald_read = float(journald["read_seconds"])
        journald_lines = int(journald["read_lines"])
        print(
            f"  journalctl             {rate(journald_lines, journald_read)}   "
            f"ours/it {ratio(journald_read / journald_lines, read_seconds / count)}   "
            f"({journald_lines:,} entries of {journald['source']})"
        )
    print("\nfollow latency (written -> printed)")
    print(f"  ours (journal -f)      {percentiles(ours_latency)}")
    print(f"  tail -f (the floor)    {percentiles(tail_latency)}")
    if "latencies" in journald:
        print(f"  journalctl -f          {percentiles(journald['latencies'])}")
    if not isinstance(peer, dict) or "error" in journald:
        print(f"\njournald/journalctl not measured: {journald.get('error', peer)}")
    elif "write_seconds" not in journald:
        print("\njournald write and follow not measured: the machine's own journal is left alone")

    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (wall-clock figures suffer from it)")
    checks = [
        ("write >= 200,000 lines/s", count / ours_write, TARGET_WRITE, count / ours_write_cpu),
        ("read >= 300,000 lines/s", count / read_seconds, TARGET_READ, count / read_cpu),
    ]
    for name, wall, target, cpu in checks:
        verdict = "PASS" if wall >= target else ("PASS (CPU)" if cpu >= target else "MISS")
        print(f"  {verdict:10} {name}: {wall:,.0f} wall, {cpu:,.0f} per CPU-second")
    latency = p99(ours_latency)
    print(
        f"  {'PASS' if latency < TARGET_P99_MS else 'MISS':10} follow p99 < 50 ms: {latency:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
