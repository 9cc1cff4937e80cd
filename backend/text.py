"""Provides the one literal cleaner for text read from the store: control characters escaped.

Whatever a record holds is shown, never obeyed: an ESC, a BEL, a carriage return, a C1
control or a bidirectional override is written out as text the way systemctl writes it
(``\\x1b``, ``\\a``, ``\\r``, ``\\u202e``), so it cannot move the cursor, set the terminal's
title or reorder what the reader sees. Plain text passes through unchanged, byte for byte.
"""

from __future__ import annotations

import re

# C0 controls, DEL, C1 controls, the bidi embeddings/overrides (U+202A-202E) and isolates
# (U+2066-2069), and the line/paragraph separators some terminals and widgets break on.
_UNSAFE = "\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_SINGLE_LINE = re.compile(f"[{_UNSAFE}]")
_KEEP_LINES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {
    "\a": "\\a",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\v": "\\v",
    "\f": "\\f",
    "\r": "\\r",
}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"


def literal(text: str | bytes, *, lines: bool = False) -> str:
    """``text`` with every control character written out as an escape, as systemctl does.

    With ``lines`` newlines and tabs stay (a unit file, a value of several lines); every
    other control character is escaped either way. Bytes that are not UTF-8 show as
    ``\\xNN``.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    if text.isprintable():
        # The common case, checked in C: no control, format or separator character at all.
        return text
    pattern = _KEEP_LINES if lines else _SINGLE_LINE
    return pattern.sub(_escape, text)


def is_plain(text: str) -> bool:
    """True when ``text`` has no character :func:`literal` would escape (on one line)."""
    return _SINGLE_LINE.search(text) is None
