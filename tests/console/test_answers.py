"""Issue 13 in the console: every action answers, errors say why, focus and layout hold."""

from __future__ import annotations

from typing import Any

from console.app import ClusterConsole
from tests.console.conftest import SIZE, console_for, wait_for

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
