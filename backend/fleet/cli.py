"""Runs a cluster node: `clusterd node` (agent, engine candidate, overlay lease)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

from clustertui.backend import filemodes
from clustertui.backend.etcd import ConfigError, EtcdError, make_client
from clustertui.backend.fleet.agent import Agent
from clustertui.backend.fleet.engine import Engine
from clustertui.backend.fleet.fence import DEFAULT_MARGIN, parse_margin
from clustertui.backend.fleet.model import Machine
from clustertui.backend.fleet.output import open_journal
from clustertui.backend.fleet.registry import DEFAULT_PREFIX, Registry
from clustertui.backend.fleet.unitfile import parse_timespan
from clustertui.backend.version import VERSION

log = logging.getLogger("clusterd.node")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--endpoints", default="http://127.0.0.1:2379", help="store URLs, comma-separated"
    )
    parser.add_argument(
        "--data-dir", required=True, help="directory for machine-id, the journal and unit state"
    )
    parser.add_argument("--machine-id", help="32 hex characters; generated once by default")
    parser.add_argument("--metadata", default="", help="k=v,k=v for MachineMetadata constraints")
    parser.add_argument("--public-ip", default="", help="address other machines reach this one at")
    parser.add_argument(
        "--agent-ttl", default="30s", help="how long the machine stays listed after it dies"
    )
    parser.add_argument(
        "--fence-margin",
        default=str(DEFAULT_MARGIN),
        help="part of the agent TTL kept for stopping units when the store is out of reach: "
        "non-global units stop after TTL*(1-margin) without a lease renewal (0.3 or 30%%; "
        "0 turns fencing off)",
    )
    parser.add_argument(
        "--engine-reconcile-interval", default="2s", help="how often the engine reconciles anyway"
    )
    parser.add_argument(
        "--disable-engine", action="store_true", help="never become the engine leader"
    )
    parser.add_argument("--no-overlay", action="store_true", help="do not lease an overlay subnet")
    parser.add_argument(
        "--iface",
        help="the overlay's underlay interface: with it the node programs the overlay's data "
        "plane (vxlan or host-gw) as `clusterd overlay` does; without it, it only leases",
    )
    parser.add_argument(
        "--ip-masq", action="store_true", help="masquerade traffic leaving the overlay"
    )
    parser.add_argument(
        "--subnet-file", help="where subnet.env is written (default: DATA_DIR/subnet.env)"
    )
    parser.add_argument("--key-prefix", default=DEFAULT_PREFIX, help="scheduler key prefix")
    parser.add_argument("--hostname", default="", help="host name to report (this host's)")
    parser.add_argument("--cacert", help="CA file to verify the store's certificate")
    parser.add_argument("--cert", help="client certificate for the store")
    parser.add_argument("--key", help="client key for the store")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus /metrics on 127.0.0.1:PORT (units, engine, journal, overlay)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")


def parse_metadata(text: str) -> dict[str, str]:
    """``k=v,k=v`` into a dict; raises ValueError on a pair without ``=``."""
    metadata: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"metadata {pair!r} is not key=value")
        metadata[key.strip()] = value.strip()
    return metadata


def machine_id(data_dir: Path, given: str | None) -> str:
    """The given ID, else the one kept in DATA_DIR/machine-id, else a new one kept there."""
    if given:
        if not re.fullmatch(r"[0-9A-Za-z]{8,64}", given):
            raise ValueError("--machine-id must be 8 to 64 letters and digits (32 hex usually)")
        return given
    path = data_dir / "machine-id"
    if path.exists():
        kept = path.read_text().strip()
        if kept:
            return kept
    new = uuid.uuid4().hex
    # Written whole or not at all: a reader never sees an empty ID.
    partial = path.with_name(f".machine-id.{os.getpid()}")
    # World-readable, as /etc/machine-id is.
    filemodes.write_file(partial, (new + "\n").encode(), filemodes.PUBLIC_FILE)
    partial.replace(path)
    return new


def default_public_ip(endpoints: str) -> str:
    """The local address that routes to the first store endpoint."""
    host = endpoints.split(",")[0].split("://")[-1].rsplit(":", 1)[0].strip("[]") or "127.0.0.1"
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, 9))
        return str(sock.getsockname()[0])
    return "127.0.0.1"


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> int:
    data_dir: Path = args.data_dir
    ident: str = args.machine_id
    ttl = max(1, round(parse_timespan(args.agent_ttl)))
    interval = parse_timespan(args.engine_reconcile_interval)
    hostname = args.hostname or socket.gethostname()
    machine = Machine(
        id=ident,
        public_ip=args.public_ip or default_public_ip(args.endpoints),
        metadata=parse_metadata(args.metadata),
        hostname=hostname,
        data_dir=str(data_dir),
        version=VERSION,
    )
    client = make_client(args.endpoints, cacert=args.cacert, cert=args.cert, key=args.key)
    registry = Registry(client, args.key_prefix)
    sink: Any = open_journal(data_dir, hostname=hostname, machine_id=ident)
    metrics = None
    if args.metrics_port:
        from clustertui.backend.fleet.metrics import CountingSink, NodeMetrics

        metrics = NodeMetrics()
        sink = metrics.sink = CountingSink(sink)
    agent = Agent(
        client,
        registry,
        machine,
        data_dir=data_dir,
        sink=sink,
        ttl=ttl,
        reconcile_interval=max(interval, 1.0),
        fence_margin=parse_margin(args.fence_margin),
    )
    tasks = [asyncio.create_task(agent.run(stop), name="agent")]
    if metrics is not None:
        metrics.agent = agent
    if not args.no_overlay:
        # Imported only when used: the overlay is optional on a node.
        from clustertui.backend.overlay.cli import check_underlay, serve
        from clustertui.backend.overlay.lease import SubnetManager

        overlay = SubnetManager(
            client,
            machine.public_ip,
            data_dir,
            backend_data={"MachineID": ident},
            ip_masq=args.ip_masq,
        )
        if args.subnet_file:
            overlay.subnet_env = Path(args.subnet_file)
        iface = None
        if args.iface:
            _, iface = await asyncio.to_thread(check_underlay, args.iface, machine.public_ip)
        serving = serve(
            client, overlay, stop, iface=iface, prefix=overlay.prefix, ip_masq=args.ip_masq
        )
        tasks.append(asyncio.create_task(serving, name="overlay"))
        if metrics is not None:
            metrics.overlay = overlay
            tasks.append(asyncio.create_task(metrics.watch_lease(), name="lease age"))
    if not args.disable_engine:
        engine = Engine(client, registry, ident, ttl=ttl, reconcile_interval=interval)
        if metrics is not None:
            metrics.time_engine(engine)
        tasks.append(asyncio.create_task(engine.run(stop), name="engine"))
    server = None
    if metrics is not None:
        from clustertui.backend.fleet.metrics import serve_metrics

        server = await serve_metrics(metrics, args.metrics_port)
        log.info("metrics on http://127.0.0.1:%d/metrics", args.metrics_port)
    log.info("machine %s (%s) serving; data in %s", ident, machine.public_ip, data_dir)
    try:
        await stop.wait()
    finally:
        stop.set()
        if server is not None:
            server.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        sink.close()
        await client.close()
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        args.data_dir = Path(args.data_dir).expanduser().resolve()
        # 0711: only the node lists it; subnet.env (0644) and the journal (0750) stay
        # reachable, the private parts (run/) are 0700 themselves.
        filemodes.ensure_dir(args.data_dir, filemodes.NODE_DIR, log)
        parse_metadata(args.metadata)
        parse_timespan(args.agent_ttl)
        parse_margin(args.fence_margin)
        parse_timespan(args.engine_reconcile_interval)
        args.machine_id = machine_id(args.data_dir, args.machine_id)
    except (ValueError, OSError) as error:
        print(f"clusterd node: {error}", file=sys.stderr)
        return 2

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await serve(args, stop)

    try:
        return asyncio.run(main())
    except (ConfigError, EtcdError, ValueError, OSError) as error:
        print(f"clusterd node: {error}", file=sys.stderr)
        return 1
