"""The real etcdctl against real etcd and the bundled store: the same commands, the same output.

Both stores start empty and every test runs the same commands on both, so their revisions
move in step; outputs are compared after masking what differs by nature (IDs, sizes,
hashes, addresses, timings, versions).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.bundled import BundledStore
from tests.harness.etcd import EtcdMember, start_etcd
from tests.harness.procs import spawned
from tests.kv.tools import ETCDCTL, Result, etcdctl

_MASKS = [
    (re.compile(r"https?://(127\.0\.0\.1|localhost):\d+"), "<url>"),
    (re.compile(r'"(cluster_id|member_id|ID|hash|leader)":\d+'), r'"\1":<n>'),
    (re.compile(r'"(raft_index|raftIndex|raftAppliedIndex|dbSize|dbSizeInUse)":\d+'), r'"\1":<n>'),
    (re.compile(r'"version":"[0-9.]+"'), '"version":"<v>"'),
    (re.compile(r"\b[0-9a-f]{12,16}\b"), "<id>"),
    (re.compile(r"\b\d+(\.\d+)? [kMG]?B\b"), "<size>"),
    (re.compile(r"took = [0-9.]+[mµn]?s"), "took = <t>"),
    (re.compile(r"remaining\(\d+s\)"), "remaining(<n>s)"),
    (re.compile(r"\b3\.4\.\d+\b"), "<version>"),
    (re.compile(r"^<url>, \d+$", re.MULTILINE), "<url>, <hash>"),
    # endpoint status: raft index and applied index (etcd also logs membership entries)
    (re.compile(r"(true|false), (true|false), (\d+), \d+, \d+, "), r"\1, \2, \3, <i>, <i>, "),
]


def error_lines(text: str) -> str:
    """etcdctl's own error lines, without its client library's timestamped JSON log lines."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("{"))


def masked(text: str) -> str:
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text


@dataclass
class Pair:
    """A real etcd and a bundled store, driven in step."""

    etcd: EtcdMember
    bundled: BundledStore

    @property
    def stores(self) -> list[EtcdMember | BundledStore]:
        return [self.etcd, self.bundled]

    def both(self, *args: str, stdin: str | None = None) -> tuple[Result, Result]:
        first = etcdctl(self.etcd.url, *args, stdin=stdin)
        second = etcdctl(self.bundled.url, *args, stdin=stdin)
        return first, second

    def same(self, *args: str, stdin: str | None = None) -> str:
        """Run on both; assert equal masked output and exit code; return the masked output."""
        real, ours = self.both(*args, stdin=stdin)
        assert (ours.rc, masked(ours.out), masked(error_lines(ours.err))) == (
            real.rc,
            masked(real.out),
            masked(error_lines(real.err)),
        ), f"etcdctl {' '.join(args)}"
        return masked(real.out + error_lines(real.err))


def _start_pair(root: Path) -> Pair:
    etcd = start_etcd(root / "etcd")
    bundled = BundledStore(data_dir=root / "bundled" / "kv", extra=["--name", "etcd0"]).start()
    return Pair(etcd, bundled)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    started = _start_pair(tmp_path_factory.mktemp("etcdctl"))
    yield started
    for store in started.stores:
        store.stop()


@pytest.fixture
def fresh_pair(tmp_path: Path) -> Iterator[Pair]:
    started = _start_pair(tmp_path)
    yield started
    for store in started.stores:
        store.stop()


def _revision(pair: Pair) -> int:
    real, ours = pair.both("get", "x", "-w", "json")
    revisions = {int(re.search(r'"revision":(\d+)', r.out).group(1)) for r in (real, ours)}  # type: ignore[union-attr]
    assert len(revisions) == 1, "the stores' revisions are out of step"
    return revisions.pop()


def test_put_and_get_with_every_output_flag_match_etcd(pair: Pair) -> None:
    for key, value in [("/g/b", "2"), ("/g/a", "1"), ("/g/c", "3"), ("/g/a", "1b"), ("/h", "x")]:
        assert pair.same("put", key, value) == "OK\n"
    pair.same("get", "--prefix", "/g/")
    pair.same("get", "--prefix", "--keys-only", "/g/")
    pair.same("get", "--prefix", "--limit", "2", "/g/")
    pair.same("get", "--prefix", "--sort-by=MODIFY", "--order=DESCEND", "/g/")
    pair.same("get", "--prefix", "--sort-by=VALUE", "--order=ASCEND", "/g/")
    pair.same("get", "--from-key", "/g/b")
    pair.same("get", "--prefix", "-w", "json", "/g/")
    pair.same("get", "--print-value-only", "/g/a")
    pair.same("get", "/g/a", "/g/c")
    pair.same("get", "/nothing")
    old = _revision(pair) - 1
    assert "1\n" not in pair.same("get", f"--rev={old}", "/g/a")


def test_del_prefix_reports_the_count_and_prev_kv(pair: Pair) -> None:
    for key in ("/d/1", "/d/2", "/d/3"):
        pair.same("put", key, "v")
    assert pair.same("del", "--prev-kv", "/d/1") == "1\n/d/1\nv\n"
    assert pair.same("del", "--prefix", "/d/") == "2\n"
    assert pair.same("del", "/d/none") == "0\n"


def test_watch_replays_with_rev_prefix_and_prev_kv(pair: Pair) -> None:
    pair.same("put", "/w/a", "1")
    start = _revision(pair)
    pair.same("put", "/w/a", "2")
    pair.same("put", "/w/b", "3")
    pair.same("del", "/w/a")
    outputs = []
    for store in pair.stores:
        with spawned(
            [ETCDCTL, f"--endpoints={store.url}", "watch", "--prefix", "--prev-kv",
             f"--rev={start}", "/w/"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
        ) as watcher:  # fmt: skip
            assert watcher.stdout is not None
            lines = [watcher.stdout.readline() for _ in range(16)]
        outputs.append("".join(lines))
    assert outputs[1] == outputs[0]
    assert outputs[0].startswith("PUT\n/w/a\n1\n")
    assert "DELETE\n/w/a\n2\n/w/a\n\n" in outputs[0]


def test_lease_commands_match_etcd(pair: Pair) -> None:
    real, ours = pair.both("lease", "grant", "100")
    assert masked(real.out) == masked(ours.out) == "lease <id> granted with TTL(100s)\n"
    ids = [r.out.split()[1] for r in (real, ours)]
    for store, lease in zip(pair.stores, ids, strict=True):
        assert etcdctl(store.url, "put", "--lease", lease, "/l/k", "v").out == "OK\n"
    results = [
        etcdctl(store.url, "lease", "timetolive", "--keys", lease)
        for store, lease in zip(pair.stores, ids, strict=True)
    ]
    assert masked(results[0].out) == masked(results[1].out)
    assert "attached keys([/l/k])" in results[1].out
    listed = [etcdctl(store.url, "lease", "list").out for store in pair.stores]
    assert masked(listed[0]) == masked(listed[1])
    for store, lease in zip(pair.stores, ids, strict=True):
        kept = etcdctl(store.url, "lease", "keep-alive", "--once", lease)
        assert kept.out == f"lease {lease} keepalived with TTL(100)\n"
        revoked = etcdctl(store.url, "lease", "revoke", lease)
        assert revoked.out == f"lease {lease} revoked\n"
    pair.same("get", "/l/k")
    pair.same("lease", "revoke", "1234")
    pair.same("lease", "timetolive", "1234")


def test_txn_from_stdin_matches_etcd(pair: Pair) -> None:
    pair.same("put", "/t/k", "old")
    script = 'value("/t/k") = "old"\n\nput /t/k new\nget /t/k\n\nput /t/k failed\n\n'
    assert pair.same("txn", stdin=script) == "SUCCESS\n\nOK\n\n/t/k\nnew\n"
    assert pair.same("txn", stdin=script).startswith("FAILURE")
    pair.same("get", "/t/k")


def test_endpoint_and_member_commands_match_etcd(pair: Pair) -> None:
    pair.same("endpoint", "health")
    pair.same("endpoint", "status")
    pair.same("endpoint", "status", "-w", "json")
    pair.same("endpoint", "hashkv")
    pair.same("member", "list")
    pair.same("member", "list", "-w", "json")
    pair.same("endpoint", "status", "--cluster")
    pair.same("endpoint", "health", "--cluster")
    pair.same("defrag")
    pair.same("alarm", "list")


def test_compaction_then_reading_history_below_it_fails_alike(fresh_pair: Pair) -> None:
    for value in ("1", "2", "3"):
        fresh_pair.same("put", "/c/k", value)
    assert fresh_pair.same("compaction", "3") == "compacted revision 3\n"
    fresh_pair.same("get", "--rev=2", "/c/k")
    fresh_pair.same("get", "--rev=3", "/c/k")
    fresh_pair.same("compaction", "--physical", "4")
    fresh_pair.same("compaction", "3")


def _lock_holders(store: EtcdMember | BundledStore, journal: Path, holders: int) -> list[str]:
    """Run contenders for one lock; each writes enter/leave lines while it holds the lock."""
    section = f"echo enter $$ >> {journal}; sleep 0.2; echo leave $$ >> {journal}"
    with contextlib.ExitStack() as stack:
        procs = [
            stack.enter_context(
                spawned(
                    [ETCDCTL, f"--endpoints={store.url}", "lock", "/locks/one", "--",
                     "sh", "-c", section],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env={**os.environ, "ETCDCTL_API": "3"},
                )
            )
            for _ in range(holders)
        ]  # fmt: skip
        for proc in procs:
            proc.wait(timeout=30)
            assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    return journal.read_text().split("\n")[:-1]


def test_lock_gives_mutual_exclusion_on_both_stores(fresh_pair: Pair, tmp_path: Path) -> None:
    for store in fresh_pair.stores:
        journal = tmp_path / f"{store.kind}.journal"
        lines = _lock_holders(store, journal, 4)
        assert len(lines) == 8
        for enter, leave in zip(lines[::2], lines[1::2], strict=True):
            assert enter.startswith("enter ") and leave == "leave " + enter.split()[1]


def test_elect_has_one_leader_and_hands_over_when_it_leaves(fresh_pair: Pair) -> None:
    for store in fresh_pair.stores:
        env = {**os.environ, "ETCDCTL_API": "3"}
        base = [ETCDCTL, f"--endpoints={store.url}", "elect", "/elect/one"]
        with (
            spawned([*base, "alpha"], stdout=subprocess.PIPE, text=True, env=env) as first,
            contextlib.ExitStack() as stack,
        ):
            assert first.stdout is not None
            assert first.stdout.readline().startswith("/elect/one/")
            assert first.stdout.readline() == "alpha\n"
            second = stack.enter_context(
                spawned([*base, "beta"], stdout=subprocess.PIPE, text=True, env=env)
            )
            observed = etcdctl(store.url, "get", "--prefix", "/elect/one/", "--print-value-only")
            # Candidates' keys sort by lease ID; beta's may not have been written yet.
            assert "alpha" in observed.out.split()
            assert set(observed.out.split()) <= {"alpha", "beta"}
            time.sleep(0.5)
            assert second.poll() is None
            first.terminate()
            first.wait(timeout=10)
            assert second.stdout is not None
            assert second.stdout.readline().startswith("/elect/one/")
            assert second.stdout.readline() == "beta\n"
            second.terminate()
            second.wait(timeout=10)
