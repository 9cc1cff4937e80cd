"""Provides ``Batch``: many netlink "replace" requests sent at once, acknowledged together.

pyroute2's calls wait for each acknowledgement in turn (about a millisecond of Python per
call); a host joining a cluster of 250 needs 750 entries. Here the messages are encoded by
pyroute2's own message classes and written to one NETLINK_ROUTE socket in chunks, and the
acknowledgements are read back per chunk: the kernel does the same work, Python much less.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Any

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
RTM_NEWROUTE = 24
RTM_NEWNEIGH = 28
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
AF_BRIDGE = 7
CHUNK = 16 * 1024

_REPLACE = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE


class BatchError(OSError):
    """The kernel refused one request of the batch; ``what`` says which."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(code, f"{what}: {os.strerror(code)}")
        self.what = what


class Batch:
    """Collects route, neighbour and FDB replacements; ``send()`` programs them all."""

    def __init__(self) -> None:
        self._messages: list[tuple[bytes, str]] = []

    def __len__(self) -> int:
        return len(self._messages)

    def _add(self, message: Any, kind: int, what: str) -> None:
        message["header"]["type"] = kind
        message["header"]["flags"] = _REPLACE
        message["header"]["sequence_number"] = len(self._messages) + 1
        message.encode()
        self._messages.append((bytes(message.data), what))

    def route(self, dst: Any, gateway: str, oif: int, proto: int, *, onlink: bool) -> None:
        from pyroute2.netlink.rtnl.rtmsg import rtmsg

        message = rtmsg()
        message["family"] = socket.AF_INET
        message["dst_len"] = dst.prefixlen
        message["table"] = 254  # main
        message["proto"] = proto
        message["scope"] = 0  # universe
        message["type"] = 1  # unicast
        message["flags"] = 4 if onlink else 0  # RTNH_F_ONLINK
        message["attrs"] = [
            ("RTA_DST", str(dst.network_address)),
            ("RTA_GATEWAY", gateway),
            ("RTA_OIF", oif),
        ]
        self._add(message, RTM_NEWROUTE, f"route {dst} via {gateway}")

    def neighbour(self, dst: str, mac: str, ifindex: int) -> None:
        from pyroute2.netlink.rtnl.ndmsg import ndmsg

        message = ndmsg()
        message["family"] = socket.AF_INET
        message["ifindex"] = ifindex
        message["state"] = 0x80  # NUD_PERMANENT
        message["attrs"] = [("NDA_DST", dst), ("NDA_LLADDR", mac)]
        self._add(message, RTM_NEWNEIGH, f"neighbour {dst} lladdr {mac}")

    def fdb(self, mac: str, dst: str, ifindex: int) -> None:
        from pyroute2.netlink.rtnl.ndmsg import ndmsg

        message = ndmsg()
        message["family"] = AF_BRIDGE
        message["ifindex"] = ifindex
        message["state"] = 0x80  # NUD_PERMANENT
        message["flags"] = 0x02  # NTF_SELF
        message["attrs"] = [("NDA_LLADDR", mac), ("NDA_DST", dst)]
        self._add(message, RTM_NEWNEIGH, f"fdb {mac} dst {dst}")

    def send(self) -> None:
        """Program everything collected, in order; raise :class:`BatchError` on a refusal."""
        if not self._messages:
            return
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
            sock.bind((0, 0))
            # Acknowledgements without a copy of the request: small, so a chunk's all fit.
            sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            start = 0
            while start < len(self._messages):
                end, size = start, 0
                while end < len(self._messages) and size + len(self._messages[end][0]) <= CHUNK:
                    size += len(self._messages[end][0])
                    end += 1
                end = max(end, start + 1)
                sock.send(b"".join(data for data, _ in self._messages[start:end]))
                self._acks(sock, range(start + 1, end + 1))
                start = end
        self._messages.clear()

    def _acks(self, sock: socket.socket, sequences: range) -> None:
        pending = set(sequences)
        failed: tuple[int, int] | None = None
        while pending:
            data = sock.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _, sequence, _ = struct.unpack_from("=IHHII", data, offset)
                if kind == NLMSG_ERROR and sequence in pending:
                    pending.discard(sequence)
                    (code,) = struct.unpack_from("=i", data, offset + 16)
                    if code and failed is None:
                        failed = (sequence, -code)
                offset += max(16, (length + 3) & ~3)
        if failed is not None:
            sequence, code = failed
            raise BatchError(code or errno.EIO, self._messages[sequence - 1][1])
