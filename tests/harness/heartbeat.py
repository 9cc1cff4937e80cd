"""Provides heartbeat units (PID and time every 100 ms to a file) and the checks on their files.

A unit's copies all append to the same file, so two copies running at once show as two PIDs
whose spans of beats overlap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCRIPT = """#!/bin/sh
# One line per beat: the shell's PID and the wall time, every 100 ms.
while :; do
    echo "$$ $(date +%s.%N)" >> "$1"
    sleep 0.1
done
"""


def write_script(directory: Path) -> Path:
    path = directory / "heartbeat.sh"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        path.write_text(SCRIPT)
        path.chmod(0o755)
    return path


def unit_text(script: Path, beats: Path, fleet: str = "") -> str:
    """A unit whose process beats into ``beats``; ``fleet`` is the [X-Fleet] body, if any."""
    text = f"[Service]\nExecStart=/bin/sh {script} {beats}\nTimeoutStopSec=2\n"
    if fleet:
        text += f"[X-Fleet]\n{fleet}\n"
    return text


@dataclass(frozen=True)
class Span:
    pid: int
    first: float
    last: float


def spans(beats: Path, since: float = 0.0) -> list[Span]:
    """Each PID's first and last beat (from ``since`` on), ordered by first beat."""
    seen: dict[int, list[float]] = {}
    try:
        text = beats.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue  # a line being written
        try:
            pid, at = int(parts[0]), float(parts[1])
        except ValueError:
            continue
        if at < since:
            continue
        span = seen.setdefault(pid, [at, at])
        span[0] = min(span[0], at)
        span[1] = max(span[1], at)
    return sorted((Span(pid, a, b) for pid, (a, b) in seen.items()), key=lambda s: s.first)


def overlaps(found: list[Span]) -> list[tuple[Span, Span, float]]:
    """Pairs of PIDs that beat at the same time, with how long they overlapped (seconds)."""
    result = []
    for i, one in enumerate(found):
        for other in found[i + 1 :]:
            both = min(one.last, other.last) - max(one.first, other.first)
            if both > 0:
                result.append((one, other, both))
    return result


def last_beat(beats: Path) -> float:
    found = spans(beats)
    return max((s.last for s in found), default=0.0)
