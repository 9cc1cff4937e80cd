"""Runs the bundled store: `clusterd kv`, with etcd's flag names and defaults."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import re
import resource
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from clustertui.backend.kv.apply import Config, Store
from clustertui.backend.kv.lease import min_lease_ttl
from clustertui.backend.kv.server import KVServer, TLSConfig
from clustertui.backend.kv.snapshot import RestoreError, restore_snapshot
from clustertui.backend.kv.wire import Limits

log = logging.getLogger("clusterd.kv")


def configure(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--data-dir", default="default.etcd", help="directory for the WAL and snapshots")
    add(
        "--listen-client-urls",
        default="http://127.0.0.1:2379",
        help="comma-separated URLs to serve clients on; https:// ones serve TLS",
    )
    add(
        "--advertise-client-urls",
        default=None,
        help="client URLs that member list reports (default: the listen URLs)",
    )
    add("--name", default="default", help="human-readable name of this member")
    add(
        "--initial-advertise-peer-urls",
        default="http://localhost:2380",
        help="peer URL member list shows (a single member has no peers to serve)",
    )
    add("--auto-compaction-mode", choices=["periodic", "revision"], default="periodic")
    add(
        "--auto-compaction-retention",
        default="0",
        help="periodic: hours (or a duration like 30m); revision: revisions to keep; 0 = off",
    )
    add("--quota-backend-bytes", type=int, default=0, help="space quota (0 = 2 GiB)")
    add("--max-request-bytes", type=int, default=1536 * 1024, help="largest request accepted")
    add("--max-txn-ops", type=int, default=128, help="most operations in one transaction")
    add("--snapshot-count", type=int, default=100_000, help="writes between snapshots")
    add("--heartbeat-interval", type=int, default=100, help="ms; sets the minimum lease TTL")
    add("--election-timeout", type=int, default=1000, help="ms; sets the minimum lease TTL")
    add(
        "--experimental-watch-progress-notify-interval",
        default="10m",
        help="how often watchers that asked for progress notifications get one",
    )
    add(
        "--restore-snapshot",
        metavar="FILE",
        help="start a new data directory from a snapshot saved with `etcdctl snapshot save`",
    )
    add(
        "--max-concurrent-streams",
        type=int,
        default=1000,
        help="streams one client connection may have open (etcd: unlimited, 2^32-1); "
        "more are refused with REFUSED_STREAM",
    )
    add(
        "--grpc-keepalive-min-time",
        default="5s",
        help="shortest interval between a client's pings; more often, or pings without "
        "calls open, end the connection with GOAWAY too_many_pings (as etcd)",
    )
    add(
        "--grpc-keepalive-interval",
        default="2h",
        help="ping a client connection after this long without a frame from it",
    )
    add(
        "--grpc-keepalive-timeout",
        default="20s",
        help="close a connection this long after an unanswered keepalive ping",
    )
    add("--cert-file", help="server TLS certificate")
    add("--key-file", help="server TLS key")
    add("--trusted-ca-file", help="CA that client certificates must chain to")
    add("--client-cert-auth", action="store_true", help="require client certificates")
    add(
        "--allow-insecure-remote",
        action="store_true",
        help="serve plaintext on a non-loopback address (anyone who can reach it can write)",
    )


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str, default_unit: str = "s") -> float:
    """``90``, ``1.5h``, ``30m``, ``500ms`` -> seconds; a bare number is in ``default_unit``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 1h, 90s)")
    return float(match.group(1)) * _UNITS[match.group(2) or default_unit]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen_address(
    url: str, tls: TLSConfig | None, allow_insecure_remote: bool
) -> tuple[str, TLSConfig | None]:
    """Where one URL listens, and with what TLS: as in etcd, the scheme decides."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https"):
        raise SystemExit(f"clusterd kv: --listen-client-urls {url!r}: use http:// or https://")
    if parts.scheme == "https" and not tls:
        raise SystemExit("clusterd kv: an https:// URL needs --cert-file and --key-file")
    if parts.scheme == "http":
        tls = None
    host = parts.hostname or "127.0.0.1"
    try:
        port = parts.port or 2379
    except ValueError as error:
        raise SystemExit(f"clusterd kv: --listen-client-urls {url!r}: {error}") from error
    if not tls and not _is_loopback(host):
        if not allow_insecure_remote:
            raise SystemExit(
                f"clusterd kv: refusing to serve plaintext on {host}, which is not loopback; "
                "give --cert-file/--key-file, reach it through an SSH tunnel, or pass "
                "--allow-insecure-remote if you really mean it"
            )
        log.warning("serving plaintext on %s: anyone who can reach it can read and write", host)
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}", tls


def raise_open_file_limit() -> None:
    """Raises the soft limit on open files to the hard limit, as Go's runtime does for etcd:
    every client connection holds a descriptor, and 1024 (a common soft limit) is few."""
    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            log.info("open-file limit raised from %s to %s", soft, hard)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s clusterd kv: %(message)s")
    if bool(args.cert_file) != bool(args.key_file):
        raise SystemExit("clusterd kv: --cert-file and --key-file go together")
    tls = None
    if args.cert_file:
        tls = TLSConfig(args.cert_file, args.key_file, args.trusted_ca_file, args.client_cert_auth)
    urls = [u.strip() for u in args.listen_client_urls.split(",") if u.strip()]
    if not urls:
        raise SystemExit("clusterd kv: --listen-client-urls needs at least one URL")
    listeners = [_listen_address(url, tls, args.allow_insecure_remote) for url in urls]
    try:
        progress = parse_duration(args.experimental_watch_progress_notify_interval)
        if args.auto_compaction_mode == "revision":
            retention = float(int(args.auto_compaction_retention))
        else:
            retention = parse_duration(args.auto_compaction_retention, "h")
    except ValueError as error:
        raise SystemExit(
            f"clusterd kv: {error}; --auto-compaction-retention is a number of revisions in "
            "revision mode, and hours or a duration (30m, 1h) in periodic mode"
        ) from error
    if args.max_request_bytes <= 0 or args.quota_backend_bytes < 0:
        raise SystemExit("clusterd kv: sizes must be positive")
    config = Config(
        data_dir=Path(args.data_dir),
        name=args.name,
        client_urls=tuple((args.advertise_client_urls or ",".join(urls)).split(",")),
        peer_urls=tuple(args.initial_advertise_peer_urls.split(",")),
        quota_bytes=args.quota_backend_bytes or Config.quota_bytes,
        max_request_bytes=args.max_request_bytes,
        min_lease_ttl=min_lease_ttl(args.heartbeat_interval, args.election_timeout),
        max_txn_ops=args.max_txn_ops,
        snapshot_count=args.snapshot_count,
    )
    compaction = (args.auto_compaction_mode, retention) if retention > 0 else None
    try:
        limits = Limits(
            max_concurrent_streams=args.max_concurrent_streams,
            keepalive_min_time=parse_duration(args.grpc_keepalive_min_time),
            keepalive_interval=parse_duration(args.grpc_keepalive_interval),
            keepalive_timeout=parse_duration(args.grpc_keepalive_timeout),
        )
    except ValueError as error:
        raise SystemExit(f"clusterd kv: {error}") from error
    if (
        limits.max_concurrent_streams < 1
        or min(limits.keepalive_interval, limits.keepalive_timeout) <= 0
    ):
        raise SystemExit(
            "clusterd kv: --max-concurrent-streams, --grpc-keepalive-interval and "
            "--grpc-keepalive-timeout must be positive"
        )
    if args.restore_snapshot:
        try:
            restore_snapshot(Path(args.restore_snapshot), config.data_dir)
        except RestoreError as error:
            print(f"clusterd kv: {error}", file=sys.stderr)
            return 1
        log.info("restored %s into %s", args.restore_snapshot, config.data_dir)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(config, listeners, urls, progress, compaction, limits))


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed: gRPC's per-call work is mostly event-loop callbacks."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(
    config: Config,
    listeners: list[tuple[str, TLSConfig | None]],
    urls: list[str],
    progress: float,
    compaction: tuple[str, float] | None,
    limits: Limits | None = None,
) -> int:
    raise_open_file_limit()
    store = Store(config)
    store.recover()
    server = KVServer(store, listeners, progress, compaction, limits)
    try:
        await server.start()
    except (OSError, RuntimeError) as error:
        failed = urls[server.listening] if server.listening < len(urls) else ", ".join(urls)
        print(f"clusterd kv: cannot listen on {failed}: {error}", file=sys.stderr)
        await server.stop()
        return 1
    log.info(
        "serving %s from %s, recovered at revision %d",
        ", ".join(urls),
        config.data_dir,
        store.space.revision,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await server.stop()
    return 0
