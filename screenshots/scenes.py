"""Provides the console scenes shown in the README and guarded by the snapshot tests."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from textual.pilot import Pilot

from clustertui.console.app import ClusterConsole
from clustertui.console.config import ClusterSettings
from clustertui.console.screens.confirm import ConfirmScreen
from clustertui.console.screens.edit_value import EditValueScreen
from clustertui.console.screens.help import HelpScreen
from clustertui.console.session import Session
from screenshots.driving import console_of, loaded, select, wait_for

SIZE = (120, 36)
THEME = "textual-dark"
SHOWN_ENDPOINT = "http://127.0.0.1:2379"
"""Stores in tests and screenshots listen on free ports; the header shows this one instead."""


def scene_console(url: str) -> ClusterConsole:
    session = Session(ClusterSettings(name="demo", endpoints=(url,)))
    return ClusterConsole(session, cluster_name="demo", theme=THEME)


async def settle(pilot: Pilot) -> None:
    """Wait for the tree and the header, then pin what varies between runs."""
    app = console_of(pilot)
    app.cluster_header.endpoint = SHOWN_ENDPOINT
    await loaded(pilot)
    await wait_for(pilot, lambda: app.cluster_header.state == "connected")
    # The header keeps polling; stopping it keeps the revision shown still for the picture.
    app.workers.cancel_group(app, "store-status")
    await pilot.pause()


async def key_pane(pilot: Pilot) -> None:
    await settle(pilot)
    await select(pilot, b"/services/web/10.1.15.2:80")
    await select(pilot, b"/queue/jobs/00000000000000000001")
    await select(pilot, b"/config/app/log-level")
    await wait_for(pilot, lambda: console_of(pilot).keys_pane.value_view.entry is not None)


async def json_value(pilot: Pilot) -> None:
    await settle(pilot)
    await select(pilot, b"/config/app/database")
    await wait_for(pilot, lambda: console_of(pilot).keys_pane.value_view.kind == "json")


async def edit_modal(pilot: Pilot) -> None:
    await json_value(pilot)
    await pilot.press("e")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, EditValueScreen))
    await pilot.pause()


async def delete_confirmation(pilot: Pilot) -> None:
    await settle(pilot)
    await select(pilot, b"/queue/jobs/")
    await pilot.press("d")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
    await pilot.pause()


async def help_screen(pilot: Pilot) -> None:
    await settle(pilot)
    await pilot.press("question_mark")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, HelpScreen))
    await pilot.pause()


async def reconnecting(pilot: Pilot) -> None:
    app = console_of(pilot)
    app.cluster_header.endpoint = SHOWN_ENDPOINT
    await wait_for(pilot, lambda: app.cluster_header.state.startswith("reconnecting"))
    app.workers.cancel_group(app, "store-status")
    # How many attempts a slow machine got through is not part of the look.
    app.cluster_header.state = "reconnecting (attempt 1)"
    # The reason is notified once it is known: wait for it, so every run shows it.
    await wait_for(pilot, lambda: bool(app.unreachable_words))
    # Said again with the shown endpoint: the dead store's port differs run to run.
    app.clear_notifications()
    words = app.unreachable_words.replace(app.session.settings.endpoints[0], SHOWN_ENDPOINT)
    app.notify(words, title="store unreachable", severity="error", markup=False)
    await pilot.pause()


@dataclass(frozen=True)
class Scene:
    """One screen of the console: how to reach it, and whether its store is down."""

    name: str
    drive: Callable[[Pilot], Awaitable[None]]
    store_down: bool = False
    size: tuple[int, int] = SIZE
    """The terminal's columns and rows (the smallest supported is 80x24)."""


SCENES = [
    Scene("key-pane", key_pane),
    Scene("json-value", json_value),
    Scene("edit-modal", edit_modal),
    Scene("delete-confirmation", delete_confirmation),
    Scene("help", help_screen),
    Scene("reconnecting", reconnecting, store_down=True),
]
