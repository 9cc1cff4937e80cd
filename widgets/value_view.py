"""Provides the value view: a key's value pretty-printed, with its revisions and lease countdown."""

from __future__ import annotations

import json
import string

import yaml
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.timer import Timer
from textual.widgets import Static

from clustertui.backend.keyspace import Entry
from clustertui.widgets.literal import clean, literal

HEX_WIDTH = 16
THEME = "ansi_dark"
_PRINTABLE = set(string.printable)


def _is_binary(value: bytes) -> bool:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return True
    if not text:
        return False
    unprintable = sum(1 for char in text[:4096] if char not in _PRINTABLE and char.isascii())
    return unprintable > len(text[:4096]) * 0.1


def hexdump(value: bytes) -> Text:
    """``hexdump -C`` style lines: offset, bytes, and the printable ones."""
    lines = Text()
    for offset in range(0, len(value), HEX_WIDTH):
        chunk = value[offset : offset + HEX_WIDTH]
        hexes = " ".join(f"{byte:02x}" for byte in chunk)
        shown = "".join(chr(byte) if 0x20 <= byte < 0x7F else "." for byte in chunk)
        lines.append(f"{offset:08x}  ", style="dim")
        lines.append(f"{hexes:<{HEX_WIDTH * 3}} ")
        lines.append(f"|{shown}|\n", style="dim")
    return lines


def render_value(value: bytes) -> tuple[str, Text | Syntax]:
    """The value's kind ("json", "yaml", "text", "binary", "empty") and how to show it."""
    if not value:
        return "empty", Text("(empty value)", style="dim italic")
    if _is_binary(value):
        return "binary", hexdump(value)
    text = value.decode("utf-8")
    stripped = text.strip()
    if stripped[:1] in ("{", "[", '"') or stripped in ("true", "false", "null"):
        try:
            parsed = json.loads(text)
        except ValueError:
            pass
        else:
            # json.dumps escapes control characters, so the highlighted text stays literal.
            pretty = json.dumps(parsed, indent=2, ensure_ascii=False)
            return "json", Syntax(clean(pretty), "json", theme=THEME, word_wrap=True)
    if "\n" in stripped and ":" in stripped:
        try:
            parsed = yaml.safe_load(text)
        except yaml.YAMLError:
            parsed = None
        if isinstance(parsed, dict | list):
            return "yaml", Syntax(clean(text.rstrip()), "yaml", theme=THEME, word_wrap=True)
    return "text", literal(text)


class ValueView(VerticalScroll):
    """The selected key: its metadata line, its lease countdown and its value."""

    DEFAULT_CSS = """
    ValueView {
        width: 2fr;
        border-left: solid $panel;
        padding: 0 1;
    }
    ValueView > #value-meta {
        color: $text-muted;
        height: 2;
    }
    ValueView > #value-key {
        text-style: bold;
        height: 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.entry: Entry | None = None
        """The entry shown, or None."""
        self.kind = "empty"
        """How the value was shown: json, yaml, text, binary or empty."""
        self.text = ""
        """The value as shown, without styles."""
        self.meta = ""
        """The metadata line as shown, without styles."""
        self.ttl: int | None = None
        """Seconds left on the key's lease, counted down locally between reads."""
        self._ticker: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static(Text("select a key", style="dim"), id="value-key")
        yield Static("", id="value-meta")
        yield Static("", id="value-body")

    def on_mount(self) -> None:
        self._ticker = self.set_interval(1.0, self._tick, pause=True)

    def show_entry(self, entry: Entry | None, ttl: int | None = None, note: str = "") -> None:
        """Show ``entry`` (None clears the view, with ``note`` saying why)."""
        self.entry = entry
        self.ttl = ttl
        key_label = self.query_one("#value-key", Static)
        body = self.query_one("#value-body", Static)
        if entry is None:
            key_label.update(
                literal(note, "dim") if note else Text("select a key", style="dim"), layout=False
            )
            self.query_one("#value-meta", Static).update("", layout=False)
            body.update("")
            self.kind = "empty"
            self.text = ""
            if self._ticker is not None:
                self._ticker.pause()
            return
        # The key and metadata lines have fixed heights: no need to lay the screen out again.
        key_label.update(literal(entry.key), layout=False)
        self.kind, renderable = render_value(entry.value)
        self.text = renderable.code if isinstance(renderable, Syntax) else renderable.plain
        body.update(renderable)
        self._show_meta()
        if self._ticker is not None:
            if entry.lease and ttl is not None:
                self._ticker.resume()
            else:
                self._ticker.pause()

    def _show_meta(self) -> None:
        entry = self.entry
        if entry is None:
            return
        meta = Text()
        meta.append(f"{self.kind}  {len(entry.value):,} bytes  ")
        meta.append(f"create {entry.create_revision}  mod {entry.mod_revision}  ")
        meta.append(f"version {entry.version}")
        if entry.lease:
            meta.append(f"\nlease {entry.lease:x}  ")
            if self.ttl is None:
                meta.append("expired", style="bold red")
            else:
                meta.append(f"TTL {self.ttl}s", style="bold")
        self.meta = meta.plain
        self.query_one("#value-meta", Static).update(meta, layout=False)

    def _tick(self) -> None:
        if self.ttl is None:
            return
        self.ttl = max(self.ttl - 1, 0)
        self._show_meta()
