"""Keys the seed's v2 commands write into the bundled store show in the console's key pane."""

from __future__ import annotations

from pathlib import Path

from tests.console.conftest import SIZE, console_for, loaded, select, tree, wait_for
from tests.harness.bundled import start_bundled
from tests.http.conftest import etcdctl2


async def test_v2_keys_in_the_key_pane(tmp_path: Path) -> None:
    store = start_bundled(tmp_path)
    try:
        assert etcdctl2(store.url, "set", "/seed/message", "Hello").returncode == 0
        assert etcdctl2(store.url, "mkdir", "/seed/foo-service").returncode == 0
        done = etcdctl2(store.url, "set", "/seed/foo-service/container1", "localhost:1111")
        assert done.returncode == 0
        app = console_for(store.url, b"/seed/")
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            names = {child.name for child in tree(app).children_of(b"/seed/")}
            assert names == {"foo-service/", "message"}
            await select(pilot, b"/seed/foo-service/container1")
            await wait_for(
                pilot,
                lambda: (
                    "container1" in [c.name for c in tree(app).children_of(b"/seed/foo-service/")]
                ),
            )
    finally:
        store.stop()
