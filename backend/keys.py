"""Provides key-space arithmetic shared by every store user: prefix ends and directory splits."""

from __future__ import annotations


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix`` (etcd's GetPrefixRangeEnd)."""
    end = bytearray(prefix)
    for index in range(len(end) - 1, -1, -1):
        if end[index] < 0xFF:
            end[index] += 1
            return bytes(end[: index + 1])
    # Every byte is 0xff: the range runs to the end of the key space.
    return b"\0"
