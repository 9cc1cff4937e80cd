"""Runs a private journald in this mount namespace, logs samples, saves journalctl's output."""

# Meant to run under ``unshare -m --propagation private`` as root: it mounts tmpfs over /run
# and /var/log/journal (inside the namespace only), starts systemd-journald, sends the
# entries of :data:`SAMPLES` over journald's native protocol, and writes what the installed
# journalctl prints for them into OUTDIR (``export``, ``json``, ``short``, …).
#
# Usage: ``python -m tests.journal.private_journald OUTDIR``.

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

IDENTIFIER = "ctest"
SAMPLES: list[tuple[int, bytes]] = [
    (6, b"plain text"),
    (3, b"an error happened"),
    (4, b"Warning: Mixed Case"),
    (6, b"binary \xff\xfe bytes"),
    (6, b"bell\x07 and escape \x1b[31mred\x1b[0m"),
    (6, b"tab\tseparated"),
    (6, b"line one\nline two\nline three"),
    (2, "unicode: Привет — ok".encode()),
    (6, b"z" * 5000),
    (5, b'{"json":"in a message"}'),
]
OUTPUTS = {
    "json": ["-o", "json"],
    "json-all": ["-o", "json", "--all"],
    "short": ["-o", "short"],
    "short-iso": ["-o", "short-iso"],
    "short-precise": ["-o", "short-precise"],
    "cat": ["-o", "cat"],
    "cat-p-err": ["-o", "cat", "-p", "err"],
    "cat-g-mixed": ["-o", "cat", "-g", "mixed"],
    "cat-r-n3": ["-o", "cat", "-r", "-n", "3"],
    "cat-p-range": ["-o", "cat", "-p", "notice..warning"],
    "cat-g-upper": ["-o", "cat", "-g", "Warning"],
    "short-all": ["-o", "short", "--all"],
    "json-seq": ["-o", "json-seq"],
    "verbose": ["-o", "verbose"],
    "verbose-all": ["-o", "verbose", "--all"],
    "verbose-r-n3-p": ["-o", "verbose", "-r", "-n", "3", "-p", "info"],
    "export-r-n3": ["-o", "export", "-r", "-n", "3"],
    "export-g-line": ["-o", "export", "-g", "line"],
}
CONF = b"[Journal]\nStorage=volatile\nRateLimitIntervalSec=0\nForwardToSyslog=no\nReadKMsg=no\n"


def native_field(name: str, value: bytes) -> bytes:
    if b"\n" in value:
        return name.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
    return name.encode() + b"=" + value + b"\n"


def main(outdir: Path) -> int:
    for target in ("/run", "/var/log/journal"):
        Path(target).mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", target], check=True)
    conf = Path("/run/private-journald.conf")
    conf.write_bytes(CONF)
    subprocess.run(["mount", "--bind", str(conf), "/etc/systemd/journald.conf"], check=True)
    journald = subprocess.Popen(["/lib/systemd/systemd-journald"], stderr=subprocess.DEVNULL)
    try:
        socket_path = "/run/systemd/journal/socket"
        deadline = time.monotonic() + 10
        while not os.path.exists(socket_path):
            if time.monotonic() > deadline:
                print("journald did not start", file=sys.stderr)
                return 1
            time.sleep(0.02)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            for priority, message in SAMPLES:
                datagram = (
                    native_field("SYSLOG_IDENTIFIER", IDENTIFIER.encode())
                    + native_field("PRIORITY", str(priority).encode())
                    + native_field("MESSAGE", message)
                )
                sock.sendto(datagram, socket_path)
        subprocess.run(["journalctl", "--sync"], check=True)
        env = {**os.environ, "TZ": "UTC"}
        base = ["journalctl", "--no-pager", "-t", IDENTIFIER]
        for name, flags in {"export": ["-o", "export"], **OUTPUTS}.items():
            result = subprocess.run([*base, *flags], env=env, capture_output=True, check=True)
            (outdir / name).write_bytes(result.stdout)
        return 0
    finally:
        journald.terminate()
        journald.wait()


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
