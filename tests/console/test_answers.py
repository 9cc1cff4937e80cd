"""Issue 13 in the console: every action answers, errors say why, focus and layout hold."""

from __future__ import annotations

from typing import Any

from textual.widgets import Input, TextArea

from backend.etcd import EtcdClient
from console.app import ClusterConsole
from console.screens.new_key import NewKeyScreen
from tests.console.conftest import SIZE, console_for, seeded_console, select, wait_for
from tests.harness.stores import RunningStore

REFUSED = "nobody answers at http://127.0.0.1:1: connection refused; is the store running there?"


def recorded(app: ClusterConsole) -> list[str]:
    """Every notification the console gives from now on (they expire from the screen)."""
    said: list[str] = []
    notify = app.notify

    def record(message: str, **kwargs: Any) -> None:
        said.append(message)
        notify(message, **kwargs)

    app.notify = record  # type: ignore[method-assign]
    return said


async def test_an_endpoint_nobody_answers_on_is_named_with_its_reason() -> None:
    """#13.2: the console says why it reconnects, in the words clusterctl uses."""
    app = console_for("http://127.0.0.1:1")
    said = recorded(app)
    async with app.run_test(size=SIZE) as pilot:
        await wait_for(pilot, lambda: REFUSED in said, within=15)
        assert app.cluster_header.state.startswith("reconnecting (attempt")
        # Said once, not at every attempt.
        await wait_for(pilot, lambda: app.attempt >= 2, within=15)
        assert said.count(REFUSED) == 1


async def test_n_keeps_the_directory_and_tab_typed_fast_reaches_the_value(
    store: RunningStore, kv: EtcdClient, ns: bytes
) -> None:
    """#13.3: typing after `n` appends to the prefilled directory; tab moves to the value
    even when typed at once (no pause between the keys)."""
    async with seeded_console(store.url, kv, ns) as (app, pilot):
        said = recorded(app)
        await select(pilot, ns + b"config/web/")
        await pilot.press("n", *"newbie1", "tab", *"v1")
        dialog = app.screen
        assert isinstance(dialog, NewKeyScreen)
        assert dialog.query_one("#new-key", Input).value == (ns + b"config/web/newbie1").decode()
        assert dialog.query_one("#new-value", TextArea).text == "v1"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not isinstance(app.screen, NewKeyScreen))
        await wait_for(pilot, lambda: any("wrote" in note for note in said))
        stored = await kv.get(ns + b"config/web/newbie1")
        assert stored is not None and stored.value == b"v1"
