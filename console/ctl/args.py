"""Provides clusterctl's arguments: fleetctl's global flags, their environment, the verbs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from clustertui.backend.fleet.registry import DEFAULT_PREFIX as FLEET_PREFIX
from clustertui.backend.overlay.config import DEFAULT_PREFIX as NETWORK_PREFIX
from clustertui.backend.version import VERSION

# Global flags, their defaults, and how the environment names them (fleetctl's scheme:
# the flag name upper-cased with dashes as underscores, behind a prefix).
GLOBAL_FLAGS: dict[str, str] = {
    "endpoint": "http://127.0.0.1:2379",
    "tunnel": "",
    "ssh-username": "core",
    "ssh-port": "22",
    "ssh-identity-file": "",
    "known-hosts-file": "~/.fleetctl/known_hosts",
    "strict-host-key-checking": "true",
    "ssh-timeout": "10.0",
    "request-timeout": "3.0",
    "key-prefix": FLEET_PREFIX,
    "ca-file": "",
    "cert-file": "",
    "key-file": "",
    "remote-clusterd": "clusterd",
    "overlay-prefix": NETWORK_PREFIX + "/",
}

# etcdctl's and clustertui's names for the TLS flags, beside fleetctl's.
ALIASES = {"endpoint": ("--endpoints",), "ca-file": ("--cacert",), "cert-file": ("--cert",),
           "key-file": ("--key",)}  # fmt: skip


class ArgumentError(Exception):
    """The command line asks for something that cannot be done (an unknown column…)."""


def fields(text: str | None, default: str, valid: Sequence[str]) -> list[str]:
    fields = (default if text is None else text).split(",")
    if fields == [""]:
        raise ArgumentError("Must define output format")
    for field in fields:
        if field not in valid:
            raise ArgumentError(f"Invalid key in output format: {field!r}")
    return fields


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterctl",
        description="fleetctl-compatible cluster control. Every global flag can also come from "
        "CLUSTERCTL_<FLAG> (or FLEETCTL_<FLAG>), e.g. CLUSTERCTL_ENDPOINT.",
    )
    for flag, default in GLOBAL_FLAGS.items():
        names = [f"--{flag}", *ALIASES.get(flag, ())]
        parser.add_argument(*names, default=None, help=f"default {default!r}")
    parser.add_argument("--version", action="version", version=f"clusterctl version {VERSION}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def listing(name: str, summary: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=summary)
        command.add_argument("-l", "--full", action="store_true", help="do not ellipsize fields")
        command.add_argument("--no-legend", action="store_true", help="do not print a legend")
        command.add_argument("--fields", default=None, help="columns to print, comma-separated")
        return command

    listing("list-machines", "enumerate the current hosts in the cluster")
    listing("list-units", "list the current state of units in the cluster")
    listing("list-unit-files", "list the units that exist in the cluster")
    subnets = sub.add_parser("list-subnets", help="list the overlay subnets and their leases")
    subnets.add_argument("-l", "--full", action="store_true")
    subnets.add_argument("--no-legend", action="store_true")

    def lifecycle(name: str, summary: str, block_default: int, blocking: bool = True) -> None:
        command = sub.add_parser(name, help=summary)
        command.add_argument("units", nargs="*", metavar="UNIT")
        command.add_argument("--replace", action="store_true", help="replace differing units")
        if blocking:
            command.add_argument("--no-block", action="store_true", help="do not wait")
            command.add_argument(
                "--block-attempts", type=int, default=block_default, help="0 waits forever"
            )

    lifecycle("submit", "upload one or more units to the cluster", 0, blocking=False)
    lifecycle("load", "schedule units to machines without starting them", 0)
    lifecycle("start", "start units, submitting and loading them if necessary", 0)
    lifecycle("stop", "stop units, leaving them loaded", 0)
    lifecycle("unload", "unschedule units from their machines", 0)
    lifecycle("destroy", "destroy units, removing them from the cluster", 0, blocking=False)
    lifecycle("restart", "stop, then start units", 0)
    status = sub.add_parser("status", help="state of units and their last journal lines")
    status.add_argument("units", nargs="+", metavar="UNIT")
    status.add_argument("--lines", "-n", type=int, default=10)
    cat = sub.add_parser("cat", help="print the unit file as the cluster holds it")
    cat.add_argument("unit", metavar="UNIT")
    journal = sub.add_parser("journal", help="print the journal of a unit, from its machine")
    journal.add_argument("unit", metavar="UNIT")
    journal.add_argument("--lines", "-n", type=int, default=10, help="lines to show")
    journal.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    journal.add_argument("-o", "--output", default="", help="journalctl output format")
    ssh = sub.add_parser("ssh", help="open a shell on (or run a command on) a machine")
    ssh.add_argument("target", metavar="MACHINE|UNIT")
    ssh.add_argument("remote", nargs=argparse.REMAINDER, metavar="COMMAND")
    sub.add_parser("version", help="print the version and exit")
    return parser


def apply_environment(args: argparse.Namespace, environ: dict[str, str]) -> None:
    """Fill unset global flags from CLUSTERCTL_<FLAG>, then FLEETCTL_<FLAG>, then defaults."""
    for flag, default in GLOBAL_FLAGS.items():
        attribute = flag.replace("-", "_")
        if getattr(args, attribute) is not None:
            continue
        suffix = attribute.upper()
        value = environ.get(f"CLUSTERCTL_{suffix}") or environ.get(f"FLEETCTL_{suffix}")
        setattr(args, attribute, value if value else default)
