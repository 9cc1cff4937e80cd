"""Provides literal text for anything read from the store: no markup, no terminal escapes."""

from __future__ import annotations

import re

from rich.text import Text

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    # The Unicode control pictures (U+2400...) show what the byte was without acting on it.
    if code < 0x20:
        return chr(0x2400 + code)
    if code == 0x7F:
        return "\u2421"
    return f"\\x{code:02x}"


def clean(text: str) -> str:
    """``text`` with control characters (escape sequences among them) made visible."""
    return _CONTROL.sub(_visible, text)


def literal(text: str | bytes, style: str = "") -> Text:
    """A Rich Text that shows ``text`` exactly: ``[bold]`` stays brackets, ESC shows as a glyph."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    return Text(clean(text), style=style, no_wrap=False)


def plural(count: int, noun: str) -> str:
    """``1 key``, ``2 keys``, ``10,000 keys``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
