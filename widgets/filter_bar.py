"""Provides the `/` filter bar and its matcher: substring, `~` regex, `!` inverts."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual import events, on
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widget import Widget
from textual.widgets import Input

Matcher = Callable[[str], bool]


class FilterError(ValueError):
    """The filter text is not a valid pattern."""


def compile_filter(text: str) -> Matcher | None:
    """A predicate for ``text``; None when the filter is empty and everything shows."""
    invert = text.startswith("!")
    body = text[1:] if invert else text
    if not body:
        return None
    if body.startswith("~"):
        try:
            pattern = re.compile(body[1:])
        except re.error as error:
            raise FilterError(f"bad regular expression {body[1:]!r}: {error}") from error

        def matches(name: str) -> bool:
            return pattern.search(name) is not None
    else:
        needle = body.lower()

        def matches(name: str) -> bool:
            return needle in name.lower()

    if invert:
        return lambda name: not matches(name)
    return matches


class FilterBar(Input):
    """A one-line filter that posts :class:`FilterBar.Applied` as the user types."""

    DEFAULT_CSS = """
    FilterBar {
        dock: bottom;
        display: none;
        height: 3;
    }
    FilterBar.-active {
        display: block;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close filter", id="filter.close")
    ]

    @dataclass
    class Applied(Message):
        """The filter changed; ``matcher`` is None when it is empty."""

        bar: FilterBar
        matcher: Matcher | None

        @property
        def control(self) -> FilterBar:
            return self.bar

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(placeholder="filter: text, ~regex, !inverted", id=id)
        self._return_to: Widget | None = None

    def open(self) -> None:
        focused = self.screen.focused
        if focused is not self:
            self._return_to = focused
        self.add_class("-active")
        self.screen.set_focus(self)

    def give_focus_back(self) -> None:
        """Focus what had it before the bar opened (the bar is hidden or left)."""
        target = self._return_to
        if target is not None and target.is_attached and target.display:
            self.screen.set_focus(target)
        elif self.parent is not None:
            self.screen.set_focus(None)
            self.screen.focus_next()

    def type_ahead(self, event: events.Key) -> bool:
        """Take a key typed right after `/` that reached the list first; whether it did."""
        # The screen knows at once; has_focus waits for the Focus event to arrive.
        if self.screen.focused is not self or not event.is_printable or not event.character:
            return False
        self.insert_text_at_cursor(event.character)
        return True

    def action_close(self) -> None:
        had_focus = self.screen.focused is self
        self.remove_class("-active")
        self.value = ""
        self.post_message(self.Applied(self, None))
        if had_focus:
            # Hidden, the bar would keep the focus and every key of the pane would be lost.
            self.give_focus_back()

    @on(Input.Changed)
    def _typed(self, event: Input.Changed) -> None:
        event.stop()
        try:
            matcher = compile_filter(event.value)
        except FilterError as error:
            # Said on the bar itself: the list keeps the last good filter meanwhile.
            self.add_class("-invalid")
            self.tooltip = Text(str(error))
            self.border_title = Text(f"{error}; the last valid filter still applies")
            return
        self.remove_class("-invalid")
        self.tooltip = None
        self.border_title = None
        self.post_message(self.Applied(self, matcher))
