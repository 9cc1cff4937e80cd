"""Tests of how values are shown: JSON and YAML pretty, binary as hex, text literal."""

from __future__ import annotations

import json

from rich.syntax import Syntax

from clustertui.widgets.filter_bar import FilterError, compile_filter
from clustertui.widgets.literal import clean, literal
from clustertui.widgets.value_view import hexdump, render_value


def test_json_is_pretty_printed_and_highlighted() -> None:
    kind, shown = render_value(json.dumps({"a": [1, 2], "b": {"c": None}}).encode())
    assert kind == "json" and isinstance(shown, Syntax)
    assert shown.code.splitlines()[:3] == ["{", '  "a": [', "    1,"]


def test_yaml_is_highlighted_as_written() -> None:
    text = "server:\n  listen: 80\nupstreams:\n  - app1\n"
    kind, shown = render_value(text.encode())
    assert kind == "yaml" and isinstance(shown, Syntax)
    assert shown.code == text.rstrip()


def test_binary_is_shown_as_hex_with_printable_bytes_beside() -> None:
    value = bytes(range(20)) + b"\xff\xfe"
    kind, _ = render_value(value)
    assert kind == "binary"
    lines = hexdump(value).plain.splitlines()
    assert lines[0].startswith("00000000  00 01 02 03")
    assert lines[1].startswith("00000010  10 11 12 13 ff fe")


def test_plain_text_and_json_strings_keep_escapes_visible() -> None:
    kind, shown = render_value(b"[bold]not markup[/bold] \x1b[2J")
    assert kind == "text"
    assert shown.plain == "[bold]not markup[/bold] \\x1b[2J"
    assert not shown.spans
    kind, shown = render_value(json.dumps({"k": "\x1b[31m"}).encode())
    assert kind == "json" and "\x1b" not in shown.code


def test_literal_shows_control_bytes_escaped_as_systemctl_does() -> None:
    assert clean("a\x07b\x9bc") == "a\\ab\\x9bc"
    assert literal(b"\xff[x]").plain == "\\xff[x]"


def test_filters_match_substrings_regexes_and_invert() -> None:
    assert compile_filter("") is None
    plain = compile_filter("Web")
    assert plain is not None and plain("nginx-web-1") and not plain("db")
    regex = compile_filter("~^db-\\d+$")
    assert regex is not None and regex("db-12") and not regex("db-x")
    inverted = compile_filter("!web")
    assert inverted is not None and inverted("db") and not inverted("web")
    try:
        compile_filter("~(")
    except FilterError as error:
        assert "bad regular expression" in str(error)
    else:
        raise AssertionError("a broken regex was accepted")
