"""Leases this machine's overlay subnet: `clusterd overlay`, as flanneld."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import sys
from pathlib import Path

from backend.overlay.config import DEFAULT_PREFIX

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Go-style durations as flanneld takes them: ``24h``, ``60m``, ``1h30m``, ``2s``."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 24h, 60m or 30s")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints", default="http://127.0.0.1:2379", help="store URLs, comma-separated"
    )
    parser.add_argument("--cacert", help="CA bundle to verify the store's certificate")
    parser.add_argument("--cert", help="client certificate for the store")
    parser.add_argument("--key", help="client key for the store")
    parser.add_argument("--data-dir", required=True, type=Path, help="where subnet.env is written")
    parser.add_argument(
        "--public-ip", required=True, help="address other machines reach this one at"
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="key prefix of the network")
    parser.add_argument(
        "--subnet-lease-ttl", type=duration, default=24 * 3600.0, help="lease TTL (24h)"
    )
    parser.add_argument(
        "--subnet-lease-renew-margin",
        type=duration,
        default=3600.0,
        help="renew this long before the lease expires (60m)",
    )
    parser.add_argument(
        "--ip-masq", action="store_true", help="say FLANNEL_IPMASQ=true in subnet.env"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log renewals too")


async def _main(args: argparse.Namespace) -> int:
    # Imported here so other clusterd commands do not pay for gRPC's start-up.
    from backend.etcd import EtcdError, make_client
    from backend.overlay.lease import SubnetManager

    client = make_client(
        [url.strip() for url in args.endpoints.split(",") if url.strip()],
        cacert=args.cacert,
        cert=args.cert,
        key=args.key,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    manager = SubnetManager(
        client,
        args.public_ip,
        args.data_dir,
        prefix=args.prefix,
        ttl=args.subnet_lease_ttl,
        renew_margin=args.subnet_lease_renew_margin,
        ip_masq=args.ip_masq,
    )
    try:
        await manager.run(stop)
    finally:
        with contextlib.suppress(EtcdError):
            await client.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    from backend.etcd import EtcdError

    try:
        return asyncio.run(_main(args))
    except (ValueError, EtcdError) as error:
        print(f"clusterd overlay: {error}", file=sys.stderr)
        return 2
