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
from typing import TYPE_CHECKING, Any

from clustertui.backend.overlay.config import DEFAULT_PREFIX, ConfigError, NetworkConfig

if TYPE_CHECKING:
    from clustertui.backend.overlay.dataplane import Iface
    from clustertui.backend.overlay.lease import SubnetManager

SUBNET_ENV = "subnet.env"
log = logging.getLogger("clusterd.overlay")

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
    parser.add_argument("--data-dir", type=Path, help="where subnet.env is written by default")
    parser.add_argument(
        "--subnet-file",
        type=Path,
        help="where flannel's subnet.env is written (default: DATA_DIR/subnet.env)",
    )
    parser.add_argument(
        "--iface",
        help="the underlay interface (default: the one holding --public-ip, else the default "
        "route's)",
    )
    parser.add_argument(
        "--public-ip",
        help="address other machines reach this one at (default: the address of --iface)",
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
        "--ip-masq",
        action="store_true",
        help="masquerade traffic leaving the overlay (nftables) and say so in subnet.env",
    )
    parser.add_argument(
        "--lease-only",
        action="store_true",
        help="lease the subnet and write subnet.env, but program no device, route or rule",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log renewals too")


async def _read_config(manager: SubnetManager, stop: asyncio.Event) -> NetworkConfig | None:
    """The network config, waited for (as flanneld waits) until it is there or ``stop``."""
    from clustertui.backend.etcd import EtcdError
    from clustertui.backend.fleet.tasks import wait_event

    delay = 0.5
    while not stop.is_set():
        try:
            return await manager.read_config()
        except (ConfigError, EtcdError) as error:
            log.error("cannot read the network config: %s (trying again in %.1fs)", error, delay)
        await wait_event(stop, delay)
        delay = min(delay * 2, 10.0)
    return None


async def _main(args: argparse.Namespace, iface: Iface | None) -> int:
    # Imported here so other clusterd commands do not pay for gRPC's start-up.
    from clustertui.backend.etcd import EtcdError, make_client
    from clustertui.backend.overlay.lease import SubnetManager

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
        args.subnet_file.parent,
        prefix=args.prefix,
        ttl=args.subnet_lease_ttl,
        renew_margin=args.subnet_lease_renew_margin,
        ip_masq=args.ip_masq,
    )
    manager.subnet_env = args.subnet_file
    try:
        await serve(client, manager, stop, iface=iface, prefix=args.prefix, ip_masq=args.ip_masq)
    finally:
        with contextlib.suppress(EtcdError):
            await client.close()
    return 0


async def serve(
    client: Any,
    manager: SubnetManager,
    stop: asyncio.Event,
    *,
    iface: Iface | None,
    prefix: str,
    ip_masq: bool,
) -> None:
    """Keep ``manager``'s lease and, given the underlay ``iface``, the data plane, until stop.

    Shared by `clusterd overlay` and the overlay inside `clusterd node`.
    """
    from clustertui.backend.overlay.dataplane import DataPlane, make_backend

    tasks = []
    try:
        if iface is not None:
            config = await _read_config(manager, stop)
            if config is None:
                return
            masquerade = None
            if ip_masq:
                from clustertui.backend.overlay.masq import Masquerade

                masquerade = Masquerade()

            def factory() -> Any:
                from pyroute2 import IPRoute

                return make_backend(config, iface, IPRoute())

            dataplane = DataPlane(client, factory, prefix=prefix, masquerade=masquerade)
            manager.backend_data = {**manager.backend_data, **await dataplane.prepare()}
            assert dataplane.backend is not None
            manager.mtu = dataplane.backend.mtu
            manager.on_change = _chain(manager.on_change, dataplane.on_lease)
            tasks.append(asyncio.create_task(dataplane.run(manager, stop), name="dataplane"))
        tasks.append(asyncio.create_task(manager.run(stop), name="lease"))
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


def _chain(first: Any, second: Any) -> Any:
    if first is None:
        return second

    def both(lease: Any, error: Any) -> None:
        first(lease, error)
        second(lease, error)

    return both


def _underlay(args: argparse.Namespace) -> Iface | None:
    args.public_ip, iface = check_underlay(args.iface, args.public_ip, lease_only=args.lease_only)
    return iface


def check_underlay(
    name: str | None, public_ip: str | None, *, lease_only: bool = False
) -> tuple[str, Iface | None]:
    """Checks before anything runs: the interface, the public IP, privileges, forwarding.

    Returns the public IP and the underlay interface when the data plane is to be
    programmed (None: lease-only mode). Raises DataPlaneError with a message for the user.
    Runs netlink's sync API: call it outside the event loop (or in a thread).
    """
    from clustertui.backend.overlay.dataplane import (
        has_net_admin,
        ip_forward_enabled,
        resolve_iface,
    )

    if not lease_only and not has_net_admin():
        log.warning(
            "LEASE-ONLY MODE: this process may not change the network (not root, no "
            "CAP_NET_ADMIN): the subnet is leased and subnet.env written, but no device, "
            "route, neighbour or FDB entry is programmed and no packet crosses the overlay. "
            "Run it as root (or with CAP_NET_ADMIN) to carry packets."
        )
        lease_only = True
    if lease_only and public_ip and not name:
        return public_ip, None
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        iface = resolve_iface(ipr, name, public_ip)
    log.info("underlay interface %s, public IP %s", iface.name, iface.public_ip)
    if lease_only:
        return str(iface.public_ip), None
    if not ip_forward_enabled():
        log.warning(
            "IP forwarding is off: this host will not forward its containers' packets onto "
            "the overlay. Turn it on with `sysctl -w net.ipv4.ip_forward=1` (and "
            "net.ipv4.ip_forward=1 in /etc/sysctl.d/ to keep it)."
        )
    return str(iface.public_ip), iface


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # -v is about renewals and the data plane, not the libraries' netlink and gRPC chatter.
    log.setLevel(logging.DEBUG if args.verbose else logging.INFO)
    logging.getLogger("asyncio").setLevel(logging.WARNING)
    from clustertui.backend.etcd import EtcdError
    from clustertui.backend.overlay.dataplane import DataPlaneError

    if args.subnet_file is None:
        if args.data_dir is None:
            print("clusterd overlay: give --data-dir or --subnet-file", file=sys.stderr)
            return 2
        args.subnet_file = args.data_dir / SUBNET_ENV
    try:
        iface = _underlay(args)
        return asyncio.run(_main(args, iface))
    except (ValueError, EtcdError, DataPlaneError) as error:
        print(f"clusterd overlay: {error}", file=sys.stderr)
        return 2
