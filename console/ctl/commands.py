"""Provides clusterctl's verbs by name, and runs one: errors become a message and status 1."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import TextIO

from clustertui.backend.etcd import EtcdError, diagnose, error_words
from clustertui.backend.fleet.model import UnsafeValue
from clustertui.backend.fleet.registry import RegistryError
from clustertui.backend.text import literal
from clustertui.console.access import RunError
from clustertui.console.ctl.args import VERSION, ArgumentError, apply_environment, build_parser
from clustertui.console.ctl.lifecycle import destroy, load, restart, start, stop, submit, unload
from clustertui.console.ctl.listings import list_machines, list_subnets, list_unit_files, list_units
from clustertui.console.ctl.remote import cat, journal, ssh, status
from clustertui.console.ctl.session import CtlError, Session

COMMANDS: dict[str, Callable[[Session], Awaitable[int]]] = {
    "list-machines": list_machines,
    "list-units": list_units,
    "list-unit-files": list_unit_files,
    "list-subnets": list_subnets,
    "submit": submit,
    "load": load,
    "start": start,
    "stop": stop,
    "unload": unload,
    "destroy": destroy,
    "restart": restart,
    "status": status,
    "cat": cat,
    "journal": journal,
    "ssh": ssh,
}


async def execute(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Run one parsed command; errors become a message on ``err`` and exit status 1."""
    try:
        ctl = Session(args, out, err)
    except EtcdError as error:
        print(f"Unable to initialize client: {error}", file=err)
        return 1
    try:
        await ctl.open_tunnel()
        return await COMMANDS[args.command](ctl)
    except (CtlError, ArgumentError, UnsafeValue, RunError) as error:
        print(literal(str(error)), file=err)
        return 1
    except EtcdError as error:
        typed = await diagnose(ctl.client, error)
        endpoints = [url for url in args.endpoint.split(",") if url.strip()]
        words = error_words(
            typed,
            endpoints,
            timeout=float(args.request_timeout),
            waited_for=f"the store's reply to {args.command}",
            wait_longer="raise --request-timeout",
        )
        print(literal(f"Error: {words}"), file=err)
        return 1
    except RegistryError as error:
        print(literal(f"Error: {error}"), file=err)
        return 1
    finally:
        await ctl.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"clusterctl version {VERSION}")
        return 0
    apply_environment(args, dict(os.environ))
    try:
        return asyncio.run(execute(args, sys.stdout, sys.stderr))
    except KeyboardInterrupt:
        return 130
