"""Provides literal text for anything read from the store: no markup, no terminal escapes."""

from __future__ import annotations

from rich.text import Text

from clustertui.backend.text import literal as _literal


def clean(text: str | bytes, *, lines: bool = True) -> str:
    """``text`` with control characters (escape sequences among them) written out as
    systemctl writes them (``\\x1b``); newlines and tabs stay unless ``lines`` is False."""
    return _literal(text, lines=lines)


cell = _literal
"""One table cell or one-line label: every control character escaped, newlines too."""


def literal(text: str | bytes, style: str = "") -> Text:
    """A Rich Text that shows ``text`` exactly: ``[bold]`` stays brackets, ESC as ``\\x1b``."""
    return Text(_literal(text, lines=True), style=style, no_wrap=False)


def plural(count: int, noun: str) -> str:
    """``1 key``, ``2 keys``, ``10,000 keys``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
