"""Writes stdin, or a command's output, into the journal: `clusterd cat`, as systemd-cat."""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import subprocess
import sys
import uuid
from pathlib import Path

from clustertui.backend.journal.cli import DEFAULT_DATA_DIR, UsageError, parse_priority
from clustertui.backend.journal.writer import JournalWriter

READ_SIZE = 65536


def machine_id(data_dir: Path) -> str:
    """The node's machine ID: ``DATA_DIR/machine-id``, else /etc/machine-id, else the host's."""
    for path in (data_dir / "machine-id", Path("/etc/machine-id")):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return uuid.uuid5(uuid.NAMESPACE_DNS, socket.gethostname()).hex


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CLUSTERD_DATA_DIR", DEFAULT_DATA_DIR)),
        help="the machine's data directory ($CLUSTERD_DATA_DIR, else /var/lib/clusterd)",
    )
    parser.add_argument(
        "-t", "--identifier", help="SYSLOG_IDENTIFIER (default: the command's name, or 'cat')"
    )
    parser.add_argument("-u", "--unit", help="_SYSTEMD_UNIT of the entries")
    parser.add_argument("-p", "--priority", default="info", help="default priority (info)")
    parser.add_argument(
        "--stderr-priority", help="priority of the command's stderr (default: as --priority)"
    )
    parser.add_argument(
        "--level-prefix",
        default="true",
        choices=["true", "false", "yes", "no", "1", "0"],
        help="honour <N> priority prefixes on lines (true)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command whose output to record")


def _record(
    writer: JournalWriter,
    args: argparse.Namespace,
    identifier: str,
    pid: int,
    streams: dict[int, tuple[str, int]],
) -> None:
    """Feed every stream in ``streams`` (fd -> (name, priority)) to the journal until EOF."""
    prefix = args.level_prefix in ("true", "yes", "1")
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)
    while streams:
        for key, _ in selector.select():
            fd = key.fd
            name, priority = streams[fd]
            chunk = os.read(fd, READ_SIZE)
            writer.feed(
                chunk,
                unit=args.unit,
                identifier=identifier,
                pid=pid,
                priority=priority,
                stream=name,
                level_prefix=prefix,
            )
            if not chunk:
                selector.unregister(fd)
                del streams[fd]


def run(args: argparse.Namespace) -> int:
    try:
        priority = parse_priority(args.priority)
        stderr_priority = parse_priority(args.stderr_priority or args.priority)
    except UsageError as error:
        print(f"clusterd cat: {error}", file=sys.stderr)
        return 1
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    data_dir: Path = args.data_dir
    writer = JournalWriter(data_dir, machine_id=machine_id(data_dir))
    try:
        if not command:
            _record(
                writer,
                args,
                args.identifier or "cat",
                os.getpid(),
                {sys.stdin.fileno(): ("stdout", priority)},
            )
            return 0
        try:
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as error:
            print(f"clusterd cat: cannot run {command[0]}: {error.strerror}", file=sys.stderr)
            return 127
        assert child.stdout is not None and child.stderr is not None
        identifier = args.identifier or Path(command[0]).name
        _record(
            writer,
            args,
            identifier,
            child.pid,
            {
                child.stdout.fileno(): ("stdout", priority),
                child.stderr.fileno(): ("stderr", stderr_priority),
            },
        )
        return child.wait()
    finally:
        writer.close()
