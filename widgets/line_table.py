"""Provides the Line-API table of the cluster panes: sorted, filtered, marked, 10,000 rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

if TYPE_CHECKING:
    from _typeshed import SupportsRichComparison

Matcher = Callable[[str], bool]
GAP = 2
MARK = "✓ "
MARK_WIDTH = 2
"""The mark column of a markable table: ✓ on each marked row."""


@dataclass(frozen=True)
class Column:
    """One column: its key, its heading, and how its cells compare when sorted."""

    key: str
    title: str
    sort_key: Callable[[Row], SupportsRichComparison] | None = None
    """How rows order by this column; by the cell's text when None."""


@dataclass
class Row:
    """One row; cells are plain text (already made literal), styled per cell or as a whole."""

    key: str
    cells: tuple[str, ...]
    styles: tuple[str, ...] = ()
    style: str = ""
    data: object = None
    """Whatever the pane needs back when the row is chosen."""
    text: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.text = "  ".join(self.cells)


@lru_cache(maxsize=256)
def _style(text: str) -> Style:
    return Style.parse(text) if text else Style()


class LineTable(ScrollView, can_focus=True):
    """A table that renders only the rows on screen, so its size does not slow it down."""

    DEFAULT_CSS = """
    LineTable {
        height: 1fr;
        background: $surface;
    }
    LineTable:focus {
        background-tint: $foreground 3%;
    }
    LineTable > .line-table--header {
        text-style: bold;
        color: $text-accent;
        background: $panel;
    }
    LineTable > .line-table--cursor {
        color: $block-cursor-foreground;
        background: $block-cursor-background;
        text-style: bold;
    }
    LineTable > .line-table--blurred-cursor {
        background: $block-cursor-blurred-background;
    }
    LineTable > .line-table--marked {
        color: $text-warning;
        background: $warning-muted;
        text-style: bold;
    }
    """

    COMPONENT_CLASSES = {
        "line-table--header",
        "line-table--cursor",
        "line-table--blurred-cursor",
        "line-table--marked",
    }

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "cursor(-1)", "Up", show=False, id="table.up"),
        Binding("down", "cursor(1)", "Down", show=False, id="table.down"),
        Binding("pageup", "page(-1)", "Page up", show=False, id="table.pageup"),
        Binding("pagedown", "page(1)", "Page down", show=False, id="table.pagedown"),
        Binding("home", "edge(0)", "First", show=False, id="table.home"),
        Binding("end", "edge(1)", "Last", show=False, id="table.end"),
        Binding("less_than_sign", "sort_by(-1)", "Sort ←", id="table.sort_left"),
        Binding("greater_than_sign", "sort_by(1)", "Sort →", id="table.sort_right"),
        Binding("equals_sign", "reverse_sort", "Reverse", show=False, id="table.reverse"),
    ]

    @dataclass
    class Selected(Message):
        """A click on the cursor row chose ``row`` (panes bind ``enter`` themselves)."""

        table: LineTable
        row: Row

        @property
        def control(self) -> LineTable:
            return self.table

    def __init__(
        self, columns: Sequence[Column], *, markable: bool = False, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self.columns = list(columns)
        self.markable = markable
        """Whether space marks rows (actions then apply to every marked row)."""
        self.rows: list[Row] = []
        """Every row, in the order the pane gave them."""
        self.view: list[Row] = []
        """The rows shown: filtered and sorted."""
        self.marked: set[str] = set()
        self.cursor = 0
        self.sort_column: int | None = None
        self.sort_reverse = False
        self.matcher: Matcher | None = None
        self.empty_text = "nothing to show"
        self._widths: list[int] = [len(c.title) for c in self.columns]

    # Data -------------------------------------------------------------------------------

    def set_rows(self, rows: list[Row]) -> None:
        """Replace the rows (one repaint), keeping the cursor on the same key where it can."""
        current = self.cursor_row
        self.rows = rows
        self._rebuild(current.key if current else None)

    def set_filter(self, matcher: Matcher | None) -> None:
        current = self.cursor_row
        self.matcher = matcher
        self._rebuild(current.key if current else None)

    def sort_by(self, column: int, reverse: bool | None = None) -> None:
        current = self.cursor_row
        if reverse is None:
            reverse = not self.sort_reverse if column == self.sort_column else False
        self.sort_column = column
        self.sort_reverse = reverse
        self._rebuild(current.key if current else None)

    def _rebuild(self, keep: str | None) -> None:
        matcher = self.matcher
        view = self.rows if matcher is None else [r for r in self.rows if matcher(r.text)]
        if self.sort_column is not None:
            column = self.columns[self.sort_column]
            index = self.sort_column
            key = column.sort_key or (lambda row: row.cells[index])
            view = sorted(view, key=key, reverse=self.sort_reverse)
        self.view = view
        keys = {row.key for row in self.rows}
        self.marked &= keys
        widths = [cell_len(c.title) + (2 if i == self.sort_column else 0)
                  for i, c in enumerate(self.columns)]  # fmt: skip
        for row in self.rows:
            for i, cell in enumerate(row.cells):
                if len(cell) > widths[i]:
                    widths[i] = cell_len(cell)
        self._widths = widths
        if keep is not None:
            for position, row in enumerate(view):
                if row.key == keep:
                    self.cursor = position
                    break
        self.cursor = max(0, min(self.cursor, len(view) - 1))
        self.virtual_size = Size(self.mark_gutter + sum(widths) + GAP * len(widths), len(view) + 1)
        self._keep_cursor_visible()
        self.refresh()

    @property
    def cursor_row(self) -> Row | None:
        if 0 <= self.cursor < len(self.view):
            return self.view[self.cursor]
        return None

    def chosen(self) -> list[Row]:
        """The marked rows shown, or else the cursor row: what an action applies to."""
        if self.marked:
            return [row for row in self.view if row.key in self.marked]
        row = self.cursor_row
        return [row] if row else []

    def move_to(self, key: str) -> bool:
        for position, row in enumerate(self.view):
            if row.key == key:
                self._set_cursor(position)
                return True
        return False

    # Rendering --------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        scroll_x = int(self.scroll_x)
        if y == 0:
            segments = self._header()
        else:
            index = int(self.scroll_y) + y - 1
            if index >= len(self.view):
                if index == 0:
                    text = set_cell_size(f" {self.empty_text}", width)
                    return Strip([Segment(text, _style("dim italic"))], width)
                return Strip.blank(width, self.rich_style)
            segments = self._row(self.view[index], index)
        strip = Strip(segments)
        return strip.crop_extend(scroll_x, scroll_x + width, self.rich_style)

    @property
    def mark_gutter(self) -> int:
        """Cells before the first column: the mark column of a markable table."""
        return MARK_WIDTH if self.markable else 0

    def _header(self) -> list[Segment]:
        style = self.get_component_rich_style("line-table--header")
        segments = [Segment(" " * self.mark_gutter, style)] if self.mark_gutter else []
        for i, column in enumerate(self.columns):
            title = column.title
            if i == self.sort_column:
                title += " ▼" if self.sort_reverse else " ▲"
            segments.append(Segment(set_cell_size(title, self._widths[i] + GAP), style))
        return segments

    def _row(self, row: Row, index: int) -> list[Segment]:
        base = self.rich_style + _style(row.style)
        if row.key in self.marked:
            base += self.get_component_rich_style("line-table--marked")
        if index == self.cursor and self.has_focus:
            base += self.get_component_rich_style("line-table--cursor")
        elif index == self.cursor:
            base += self.get_component_rich_style("line-table--blurred-cursor")
        segments = []
        if self.mark_gutter:
            marked = row.key in self.marked
            segments.append(Segment(MARK if marked else " " * self.mark_gutter, base))
        styles = row.styles
        for i, cell in enumerate(row.cells):
            style = base + _style(styles[i]) if i < len(styles) and styles[i] else base
            segments.append(Segment(set_cell_size(cell, self._widths[i] + GAP), style))
        return segments

    # Cursor -----------------------------------------------------------------------------

    def _set_cursor(self, position: int) -> None:
        position = max(0, min(position, len(self.view) - 1))
        if position == self.cursor:
            return
        old = self.cursor
        self.cursor = position
        self._keep_cursor_visible()
        self._refresh_index(old)
        self._refresh_index(position)

    def _refresh_index(self, index: int) -> None:
        y = index - int(self.scroll_y) + 1
        if 1 <= y < self.size.height:
            self.refresh_line(y)

    def _keep_cursor_visible(self) -> None:
        rows = max(1, self.size.height - 1)
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False, immediate=True, force=True)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False, immediate=True, force=True)

    def action_cursor(self, delta: int) -> None:
        self._set_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._set_cursor(self.cursor + direction * max(1, self.size.height - 2))

    def action_edge(self, end: int) -> None:
        self._set_cursor(len(self.view) - 1 if end else 0)

    def action_select(self) -> None:
        row = self.cursor_row
        if row is not None:
            self.post_message(self.Selected(self, row))

    def action_sort_by(self, step: int) -> None:
        column = 0 if self.sort_column is None else (self.sort_column + step) % len(self.columns)
        self.sort_by(column, reverse=self.sort_reverse)

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_column or 0, reverse=not self.sort_reverse)

    def toggle_mark(self) -> None:
        """Mark or unmark the cursor row; the cursor stays on it, so what was marked is
        in sight (the mark column shows ✓)."""
        row = self.cursor_row
        if row is None:
            return
        self.marked.symmetric_difference_update({row.key})
        self._refresh_index(self.cursor)

    def clear_marks(self) -> None:
        self.marked.clear()
        self.refresh()

    def column_at(self, x: int) -> int | None:
        edge = self.mark_gutter
        for i, width in enumerate(self._widths):
            edge += width + GAP
            if x < edge:
                return i
        return None

    def on_click(self, event: events.Click) -> None:
        if event.y == 0:
            column = self.column_at(event.x + int(self.scroll_x))
            if column is not None:
                self.sort_by(column)
            return
        index = int(self.scroll_y) + event.y - 1
        if 0 <= index < len(self.view):
            if index == self.cursor and event.chain > 1:
                self.action_select()
            self._set_cursor(index)

    def on_focus(self) -> None:
        self._refresh_index(self.cursor)

    def on_blur(self) -> None:
        self._refresh_index(self.cursor)

    def on_resize(self) -> None:
        self._keep_cursor_visible()
