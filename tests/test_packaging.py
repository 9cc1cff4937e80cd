"""Installed, the project is one import package: clustertui.backend, .console and .widgets."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.harness.procs import REPO

LAYERS = ("backend", "console", "widgets")


def _folders() -> set[str]:
    """Every folder under the three layers that is a Python package, by its installed name."""
    return {
        "clustertui." + ".".join(init.parent.relative_to(REPO).parts)
        for layer in LAYERS
        for init in (REPO / layer).rglob("__init__.py")
    }


def test_every_package_folder_is_installed_under_clustertui() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(config["packages"]) == _folders()
    assert config["package-dir"] == {f"clustertui.{layer}": layer for layer in LAYERS}
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert all(target.startswith("clustertui.") for target in scripts.values()), scripts


@pytest.mark.slow
def test_the_wheel_holds_only_the_clustertui_package(tmp_path: Path) -> None:
    """A wheel built from the checkout installs nothing at the top of site-packages but
    `clustertui/` (no `backend`, `console` or `widgets` to collide with other distributions)
    and carries the console's stylesheet."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(tmp_path), str(REPO)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("clustertui-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"clustertui"}
    assert "clustertui/console/console.tcss" in names
    assert "clustertui/backend/daemon.py" in names
    assert not any(name.startswith("clustertui/__init__") for name in names)


def test_nothing_imports_the_folders_by_their_bare_names() -> None:
    """With the repository root on sys.path (pytest's, a bench's), `import console` would load
    a second copy of a module beside clustertui.console's, whose classes are not the same."""
    bare = re.compile(r"^\s*(?:from|import)\s+(backend|console|widgets)\b", re.MULTILINE)
    found = [
        f"{path.relative_to(REPO)}: {match.group().strip()}"
        for folder in ("backend", "console", "widgets", "tests", "bench", "screenshots")
        for path in (REPO / folder).rglob("*.py")
        for match in bare.finditer(path.read_text())
    ]
    assert not found, "\n".join(found)
