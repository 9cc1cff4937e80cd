"""Hostile clients against the wire layer, each attack bounded, with a client probing beside it.

Every attack runs against the bundled store and (where it makes sense) real etcd 3.4, on
loopback, bounded in count and time. While it runs a probe client reads a key every 10 ms;
each test asserts the probe's worst latency, the store's RSS growth and, where streams share
the attacked connection, that no other stream dies. etcd's figures, measured on the project's
2-core machine, are in each test's docstring.

``WIRE_ABUSE_CHECKOUT=/path/to/other/checkout`` runs the bundled store from that checkout
(with this venv's Python): how each test was checked to fail on the code before the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import hpack
import pytest
from aetcd import rpc

from clustertui.backend.etcd import make_client
from clustertui.backend.kv.wire_codec import (
    ACK,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    GOAWAY,
    HEADERS,
    PING,
    PREFACE,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    SETTINGS,
    frame,
)
from tests.harness.bundled import BundledStore
from tests.harness.etcd import EtcdMember
from tests.harness.procs import Child
from tests.harness.stores import RunningStore
from tests.kv.tools import etcdctl

CHECKOUT = os.environ.get("WIRE_ABUSE_CHECKOUT")
CANCEL = 8
RANGE = "/etcdserverpb.KV/Range"
_HEADER = struct.Struct(">BHBBL")


# -- stores, possibly under a descriptor limit


@dataclass
class LimitedBundled(BundledStore):
    """The bundled store, started under ``prlimit --nofile=SOFT:HARD`` when given."""

    nofile: tuple[int, int] | None = None

    def argv(self) -> list[str]:
        argv = super().argv()
        if self.nofile:
            argv = ["prlimit", f"--nofile={self.nofile[0]}:{self.nofile[1]}", "--", *argv]
        return argv

    def start(self, timeout: float = 30.0) -> BundledStore:
        if CHECKOUT:  # the same store from another checkout (see the module's docstring)
            original = Child.__init__

            def init(child: Child, *args: object, **kwargs: object) -> None:
                original(child, *args, **kwargs)  # type: ignore[arg-type]
                child.cwd = Path(CHECKOUT)

            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(Child, "__init__", init)
                return super().start(timeout)
        return super().start(timeout)


@dataclass
class LimitedEtcd(EtcdMember):
    nofile: tuple[int, int] | None = None

    def argv(self, initial_cluster: str, state: str = "new") -> list[str]:
        argv = super().argv(initial_cluster, state)
        if self.nofile:
            argv = ["prlimit", f"--nofile={self.nofile[0]}:{self.nofile[1]}", "--", *argv]
        return argv


def start_store(
    kind: str, root: Path, nofile: tuple[int, int] | None = None, extra: list[str] | None = None
) -> RunningStore:
    if kind == "etcd":
        member = LimitedEtcd(name="etcd0", data_dir=root / "etcd0", nofile=nofile)
        return member.start().wait_ready()
    return LimitedBundled(data_dir=root / "kv", nofile=nofile, extra=list(extra or [])).start()


@pytest.fixture(params=["bundled", "etcd"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStore]:
    running = start_store(request.param, tmp_path)
    yield running
    running.stop()


@pytest.fixture
def bundled(tmp_path: Path) -> Iterator[RunningStore]:
    running = start_store("bundled", tmp_path)
    yield running
    running.stop()


def worst_allowed(store: RunningStore) -> float:
    """The probe's worst read allowed during an attack: 1 s for ours (before: 2-10 s);
    etcd, the reference, is only held to 3 s (its worst seen here: 0.93 s, rapid reset)."""
    return 1.0 if store.kind == "bundled" else 3.0


def pid_of(store: RunningStore) -> int:
    return store.child.pid  # type: ignore[attr-defined]


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def address(store: RunningStore) -> tuple[str, int]:
    host, _, port = store.url.split("//", 1)[1].rpartition(":")
    return host, int(port)


# -- the probe: a real client reading a key every 10 ms


@dataclass
class Probe:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=float("inf"))


async def probing(store: RunningStore, attack: Callable[[], object]) -> Probe:
    """Runs ``attack`` in a thread while a client reads every 10 ms; the reads' latencies."""
    client = make_client([store.url])
    await client.wait_ready()
    await client.put(b"probe", b"v")
    probe = Probe()
    done = threading.Event()

    async def reads() -> None:
        while not done.is_set():
            started = time.perf_counter()
            try:
                async with asyncio.timeout(10):
                    assert await client.get(b"probe") is not None
            except Exception as error:  # the probe's failure is the finding
                probe.errors.append(f"{type(error).__name__}: {error}")
            probe.latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)

    def attacking() -> None:
        try:
            attack()
        finally:
            done.set()

    try:
        await asyncio.gather(reads(), asyncio.to_thread(attacking))
        # What the attack left queued is part of it: the store must still answer at once.
        for _ in range(5):
            started = time.perf_counter()
            async with asyncio.timeout(10):
                await client.get(b"probe")
            probe.latencies.append(time.perf_counter() - started)
    finally:
        await client.close()
    print(f"{store.kind}: {len(probe.latencies)} reads, worst {probe.worst * 1000:.0f} ms")
    return probe


# -- raw HTTP/2 by hand


class Raw:
    """One attacking connection; a thread drains what the server sends and keeps its frames."""

    def __init__(self, store: RunningStore, keep: bool = False) -> None:
        self.sock = socket.create_connection(address(store), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.keep = keep
        self.closed = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        buffer = bytearray()
        try:
            while chunk := self.sock.recv(1 << 16):
                if not self.keep:
                    continue
                buffer += chunk
                while len(buffer) >= 9:
                    high, low, kind, flags, stream = _HEADER.unpack_from(buffer)
                    end = 9 + ((high << 16) | low)
                    if len(buffer) < end:
                        break
                    self.frames.append((kind, flags, stream, bytes(buffer[9:end])))
                    del buffer[:end]
        except OSError:
            pass
        self.closed.set()

    def send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def hello(self) -> None:
        self.send(PREFACE + frame(SETTINGS, 0, 0))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def request_headers(encoder: hpack.Encoder, stream: int) -> bytes:
    """A Range call's HEADERS frame; the same encoder's frames suit any fresh connection."""
    block = encoder.encode(
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", RANGE),
            (":authority", "localhost"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
    )
    return frame(HEADERS, END_HEADERS, stream, block)


def _window_entries(count: int) -> bytes:
    return b"".join(struct.pack(">HL", S_INITIAL_WINDOW_SIZE, 65_535 + i % 7) for i in range(count))


# -- the attacks


@pytest.mark.slow
async def test_settings_full_of_window_sizes_with_20000_streams_open_stall_nobody(
    target: RunningStore,
) -> None:
    """etcd 3.4: other clients <= 56 ms, 0.8 s of CPU (issue 11). Measured here: ours before,
    the probe timed out (5 s); ours now 16-22 ms worst; etcd 170-300 ms worst."""
    pid = pid_of(target)
    before = rss_kb(pid)

    encoder = hpack.Encoder()
    opened = b"".join(request_headers(encoder, 1 + 2 * i) for i in range(20_000))

    def attack() -> None:
        conn = Raw(target)
        try:
            conn.hello()
            conn.send(opened)
            time.sleep(1.0)
            entries = _window_entries(2730)  # 16,380 bytes: one frame each
            for _ in range(3):
                conn.send(frame(SETTINGS, 0, 0, entries))
            time.sleep(2.0)
        finally:
            conn.close()

    probe = await probing(target, attack)
    assert not probe.errors, probe.errors[:3]
    assert probe.worst < worst_allowed(target), f"a read took {probe.worst:.2f} s"
    assert rss_kb(pid) - before < 200_000


def _static_blocks(count: int, fields: int) -> list[bytes]:
    """Distinct header blocks made only of references to the static table."""
    blocks = []
    for i in range(count):
        pattern = bytes(0x82 + (i >> bit & 1) for bit in range(10))
        blocks.append((pattern * (fields // 10 + 1))[:fields])
    return blocks


@pytest.mark.slow
async def test_distinct_static_header_blocks_on_many_connections_stall_nobody(
    target: RunningStore,
) -> None:
    """etcd 3.4: 0.3 s of CPU, others 26 ms (issue 11, one connection). Here, 8 connections:
    ours before 2.0 s worst; ours now 110-230 ms; etcd 95-175 ms."""
    pid = pid_of(target)
    before = rss_kb(pid)
    blocks = _static_blocks(1024, 350)  # 350 fields of 42 bytes: within a 16 KiB header list

    flood = b"".join(
        frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * i, block) for i, block in enumerate(blocks)
    )

    def one() -> None:
        conn = Raw(target)
        try:
            conn.hello()
            conn.send(flood)
            conn.closed.wait(6)
        finally:
            conn.close()

    def attack() -> None:
        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    probe = await probing(target, attack)
    assert not probe.errors, probe.errors[:3]
    assert probe.worst < worst_allowed(target), f"a read took {probe.worst:.2f} s"
    assert rss_kb(pid) - before < 200_000


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bundled", "etcd"])
async def test_preface_only_connections_beyond_the_soft_fd_limit_leave_the_store_serving(
    kind: str, tmp_path: Path
) -> None:
    """1,100 connections sending only the preface under a 1024 soft / 4096 hard limit.

    etcd raises its soft limit to the hard one (Go does) and keeps serving; ours before ran
    out of descriptors and `etcdctl get` timed out."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2400:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    store = start_store(kind, tmp_path, nofile=(1024, 4096))
    conns: list[socket.socket] = []
    try:
        assert etcdctl(store.url, "put", "k", "v").rc == 0
        for _ in range(1100):
            sock = socket.create_connection(address(store), timeout=5)
            sock.sendall(PREFACE)
            conns.append(sock)
        started = time.monotonic()
        result = etcdctl(store.url, "get", "k", "--command-timeout=5s", timeout=20)
        took = time.monotonic() - started
        assert result.rc == 0, result.err[-500:]
        assert result.out.split() == ["k", "v"]
        assert took < 5
    finally:
        for sock in conns:
            sock.close()
        store.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bundled", "etcd"])
async def test_at_the_descriptor_limit_open_connections_serve_and_new_ones_wait_without_spinning(
    kind: str, tmp_path: Path
) -> None:
    """A hard limit of 256 descriptors, 300 connections: the store does not spin on accept,
    the connections it has keep working, and one that arrived while it could take no more is
    served once descriptors free up (etcd: grpc-go's listener backs off and retries). Ours
    before (uvloop): libuv accepted and closed each waiting connection."""
    store = start_store(kind, tmp_path, nofile=(256, 256))
    pid = pid_of(store)
    hold: list[socket.socket] = []
    client = make_client([store.url])
    late: Raw | None = None
    try:
        await client.wait_ready()
        await client.put(b"k", b"v")
        for _ in range(300):
            sock = socket.create_connection(address(store), timeout=5)
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0))
            hold.append(sock)
        await asyncio.sleep(0.5)
        cpu = cpu_seconds(pid)
        await asyncio.sleep(2.0)
        spent = cpu_seconds(pid) - cpu
        assert spent < 0.5, f"the store spent {spent:.2f} s of CPU in 2 s at its fd limit"
        async with asyncio.timeout(5):
            assert (await client.get(b"k")).value == b"v"  # the open connection serves
        late = Raw(store, keep=True)
        request = rpc.RangeRequest(key=b"k").SerializeToString()
        late.send(
            PREFACE
            + frame(SETTINGS, 0, 0)
            + request_headers(hpack.Encoder(), 1)
            + frame(DATA, END_STREAM, 1, struct.pack(">BL", 0, len(request)) + request)
        )
        await asyncio.sleep(1.0)
        for sock in hold:
            sock.close()
        hold.clear()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not late.closed.is_set():
            if any(kind == DATA and stream == 1 for kind, _, stream, _ in late.frames):
                break
            await asyncio.sleep(0.05)
        answered = [p for kind, _, stream, p in late.frames if kind == DATA and stream == 1]
        assert answered, "the connection made at the limit was never served"
        assert rpc.RangeResponse.FromString(answered[0][5:]).kvs[0].value == b"v"
    finally:
        for sock in hold:
            sock.close()
        if late is not None:
            late.close()
        await client.close()
        store.stop()


@pytest.mark.slow
async def test_rapid_reset_on_many_connections_stalls_nobody(target: RunningStore) -> None:
    """HEADERS, DATA, RST_STREAM, 20,000 times on each of 8 connections (CVE-2023-44487).
    Worst read: ours before 2.3 s; ours now 12-60 ms; etcd 0.9-1.3 s."""
    pid = pid_of(target)
    before = rss_kb(pid)
    request = struct.pack(">BL", 0, 3) + rpc.RangeRequest(key=b"k").SerializeToString()

    encoder = hpack.Encoder()
    cancel = CANCEL.to_bytes(4, "big")
    batches = [
        b"".join(
            request_headers(encoder, stream)
            + frame(DATA, 0, stream, request)
            + frame(RST_STREAM, 0, stream, cancel)
            for stream in range(1 + 2 * start, 1 + 2 * (start + 1000), 2)
        )
        for start in range(0, 20_000, 1000)
    ]

    def one() -> None:
        conn = Raw(target)
        try:
            conn.hello()
            for batch in batches:
                if not conn.send(batch):
                    return
            conn.closed.wait(2)
        finally:
            conn.close()

    def attack() -> None:
        threads = [threading.Thread(target=one) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    probe = await probing(target, attack)
    assert not probe.errors, probe.errors[:3]
    assert probe.worst < worst_allowed(target), f"a read took {probe.worst:.2f} s"
    assert rss_kb(pid) - before < 200_000


@pytest.mark.slow
async def test_a_ping_flood_ends_with_goaway_too_many_pings(target: RunningStore) -> None:
    """300,000 PINGs: etcd closes the connection by its ping policy; ours before answered all."""
    pid = pid_of(target)
    before = rss_kb(pid)
    outcome: dict[str, object] = {}

    def attack() -> None:
        conn = Raw(target, keep=True)
        try:
            conn.hello()
            ping = frame(PING, 0, 0, b"flooding")
            sent = 0
            deadline = time.monotonic() + 10
            while sent < 300_000 and time.monotonic() < deadline:
                if not conn.send(ping * 1000):
                    break
                sent += 1000
            outcome["closed"] = conn.closed.wait(5)
            outcome["frames"] = list(conn.frames)
        finally:
            conn.close()

    probe = await probing(target, attack)
    assert not probe.errors, probe.errors[:3]
    assert probe.worst < worst_allowed(target), f"a read took {probe.worst:.2f} s"
    assert outcome["closed"], "the connection was still open after the flood"
    frames = outcome["frames"]
    goaways = [payload for kind, _, _, payload in frames if kind == GOAWAY]  # type: ignore[attr-defined]
    assert goaways, "no GOAWAY"
    assert int.from_bytes(goaways[-1][4:8], "big") == ENHANCE_YOUR_CALM
    assert goaways[-1][8:] == b"too_many_pings"
    acks = sum(1 for kind, flags, _, _ in frames if kind == PING and flags & ACK)  # type: ignore[attr-defined]
    assert acks < 100
    assert rss_kb(pid) - before < 100_000


AUTH_CALLS = [
    ("AuthStatus", rpc.AuthStatusRequest()),
    ("AuthEnable", rpc.AuthEnableRequest()),
    ("UserAdd", rpc.AuthUserAddRequest(name="mallory", password="x")),
    ("UserList", rpc.AuthUserListRequest()),
    ("RoleAdd", rpc.AuthRoleAddRequest(name="r")),
    (
        "RoleGrantPermission",
        rpc.AuthRoleGrantPermissionRequest(name="r", perm=rpc.Permission(key=b"a")),
    ),
    ("UserDelete", rpc.AuthUserDeleteRequest(name="mallory")),
    ("AuthDisable", rpc.AuthDisableRequest()),
]


async def test_auth_management_calls_next_to_a_live_watch_leave_it_running(
    target: RunningStore,
) -> None:
    """On one connection: a watch, then every auth management call; each ends alone (etcd
    answers them; ours: UNIMPLEMENTED) and the watch still gets the next event. Before, the
    first of them dropped the whole connection with a traceback in the log."""
    client = make_client([target.url])
    await client.wait_ready()
    try:
        requests: asyncio.Queue[rpc.WatchRequest | None] = asyncio.Queue()

        async def outgoing():  # type: ignore[no-untyped-def]
            while (request := await requests.get()) is not None:
                yield request

        watch = rpc.WatchStub(client.channel).Watch(outgoing())
        await requests.put(rpc.WatchRequest(create_request=rpc.WatchCreateRequest(key=b"w")))
        async with asyncio.timeout(5):
            assert (await watch.read()).created
        stub = rpc.AuthStub(client.channel)
        for name, request in AUTH_CALLS:
            try:
                async with asyncio.timeout(5):
                    await getattr(stub, name)(request)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                code = error.code()
            if target.kind == "bundled":
                assert code == grpc.StatusCode.UNIMPLEMENTED, name
            else:
                assert code != grpc.StatusCode.UNAVAILABLE, name
        await client.put(b"w", b"after")
        async with asyncio.timeout(5):
            event = await watch.read()
        assert [(e.kv.key, e.kv.value) for e in event.events] == [(b"w", b"after")]
        await requests.put(None)
        watch.cancel()
    finally:
        await client.close()
    for args in (["auth", "enable"], ["user", "add", "mallory:pw"], ["role", "list"]):
        result = etcdctl(target.url, *args, "--command-timeout=5s")
        if target.kind == "bundled":
            assert result.rc != 0 and "Unimplemented" in result.err, result.err[-300:]
            assert "Traceback" not in target.output()  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_connections_that_never_finish_the_preface_are_closed(bundled: RunningStore) -> None:
    """Silent, magic-only and half-magic connections are closed within the preface timeout
    (5 s); a connection that finished its preface stays. (etcd keeps them: grpc-go's
    handshake timeout is 120 s.)"""
    pid = pid_of(bundled)
    silent = [socket.create_connection(address(bundled), timeout=10) for _ in range(50)]
    for index, sock in enumerate(silent):
        if index % 3 == 1:
            sock.sendall(PREFACE)
        elif index % 3 == 2:
            sock.sendall(PREFACE[:10])
    good = Raw(bundled)
    good.hello()
    started = time.monotonic()
    try:
        await asyncio.sleep(1.0)
        opened = len(os.listdir(f"/proc/{pid}/fd"))

        def ended(sock: socket.socket) -> bool:
            sock.settimeout(max(0.1, 9 - (time.monotonic() - started)))
            try:
                while sock.recv(65536):
                    pass
                return True
            except ConnectionResetError:
                return True
            except TimeoutError:
                return False

        results = await asyncio.to_thread(lambda: [ended(sock) for sock in silent])
        assert all(results), f"{results.count(False)} of 50 connections still open after 9 s"
        assert not good.closed.is_set()
        assert len(os.listdir(f"/proc/{pid}/fd")) <= opened - 50
    finally:
        for sock in silent:
            sock.close()
        good.close()


@pytest.mark.slow
async def test_unfinished_requests_on_many_streams_hold_at_most_the_connection_window(
    target: RunningStore,
) -> None:
    """200 Put streams each sending 1 MB of a 1.5 MB request and never the rest, whatever
    the windows say. Before, every byte was acknowledged on arrival and kept: RSS grew by
    the 200 MB sent. Now the connection's window reopens only for bytes handed to a call,
    so the store holds at most its 16 MiB (etcd: grpc-go's stream windows bound it)."""
    pid = pid_of(target)
    before = rss_kb(pid)
    encoder = hpack.Encoder()
    chunk = bytes(16_000)
    prefix = struct.pack(">BL", 0, 1_500_000)

    def put_headers(stream: int) -> bytes:
        block = encoder.encode(
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/etcdserverpb.KV/Put"),
                (":authority", "localhost"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ]
        )
        return frame(HEADERS, END_HEADERS, stream, block)

    batches = [
        put_headers(stream)
        + frame(DATA, 0, stream, prefix + chunk[:-5])
        + frame(DATA, 0, stream, chunk) * 62
        for stream in range(1, 401, 2)
    ]
    peak = [before]

    def attack() -> None:
        conn = Raw(target)
        try:
            conn.hello()
            for batch in batches:
                if not conn.send(batch):
                    break
                peak[0] = max(peak[0], rss_kb(pid))
            for _ in range(10):
                time.sleep(0.1)
                peak[0] = max(peak[0], rss_kb(pid))
        finally:
            conn.close()

    probe = await probing(target, attack)
    assert not probe.errors, probe.errors[:3]
    assert probe.worst < worst_allowed(target), f"a read took {probe.worst:.2f} s"
    grown = (peak[0] - before) // 1024
    print(f"{target.kind}: RSS grew {grown} MB at most")
    assert grown < 80, f"RSS grew by {grown} MB"
