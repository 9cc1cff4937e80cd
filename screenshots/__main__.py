"""Renders every console scene as an SVG into screenshots/: `python -m screenshots`."""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
from pathlib import Path

from clustertui.backend import demo
from screenshots.pane_scenes import PANE_SCENES, pane_console, seed_cluster
from screenshots.scenes import SCENES, Scene, scene_console

HERE = Path(__file__).resolve().parent


def _dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def render(scene: Scene, url: str, out: Path, *, panes: bool = False) -> Path:
    if panes:
        app = pane_console(url)
    else:
        app = scene_console(_dead_url() if scene.store_down else url)
    async with app.run_test(size=scene.size) as pilot:
        await scene.drive(pilot)
        app.save_screenshot(filename=f"{scene.name}.svg", path=str(out))
    return out / f"{scene.name}.svg"


async def render_all(out: Path) -> list[Path]:
    with tempfile.TemporaryDirectory(prefix="clustertui-shots-") as root:
        store = demo.start_store(Path(root) / "keys")
        panes_store = demo.start_store(Path(root) / "panes")
        try:
            await demo.seed_store(store.url)
            await seed_cluster(panes_store.url)
            shots = [await render(scene, store.url, out) for scene in SCENES]
            for scene in PANE_SCENES:
                shots.append(await render(scene, panes_store.url, out, panes=True))
            return shots
        finally:
            store.stop()
            panes_store.stop()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=HERE, help="directory for the SVGs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(render_all(args.out)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
