"""The layering rules: backend/ runs without Textual, widgets/ without console/, and every
command answers --help."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.harness.procs import REPO

IMPORT_ALL_BACKEND = """
import importlib, pkgutil, sys
from clustertui import backend
for module in pkgutil.walk_packages(backend.__path__, "clustertui.backend."):
    importlib.import_module(module.name)
loaded = sorted(name for name in sys.modules if name == "textual" or name.startswith("textual."))
print(len(list(pkgutil.walk_packages(backend.__path__))), loaded)
"""


def test_importing_every_backend_module_loads_no_textual_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL_BACKEND],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    count, loaded = result.stdout.strip().split(" ", 1)
    assert int(count) > 5, "the walk found too few backend modules to prove anything"
    assert loaded == "[]"


IMPORT = re.compile(
    r"^\s*(?:from\s+(?:clustertui\.)?(\w+)[\w.]*\s+import|import\s+(?:clustertui\.)?(\w+))",
    re.MULTILINE,
)
"""An import statement at any depth, read as text: ``ast.parse`` of the larger modules
fails on CPython 3.11.7 inside the test workers (AST constructor recursion depth mismatch)."""


def _imported(path: Path) -> set[str]:
    """The top-level packages a module imports, wherever in the module it imports them."""
    return {first or second for first, second in IMPORT.findall(path.read_text())}


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [("widgets", {"console"}), ("backend", {"console", "widgets", "textual"})],
)
def test_no_layer_imports_the_layers_above_it(layer: str, forbidden: set[str]) -> None:
    modules = sorted((REPO / layer).rglob("*.py"))
    assert len(modules) > 5, f"too few {layer} modules to prove anything"
    upward = {
        f"{path.relative_to(REPO)}: {', '.join(sorted(_imported(path) & forbidden))}"
        for path in modules
        if _imported(path) & forbidden
    }
    assert not upward, f"{layer}/ imports what sits above it:\n" + "\n".join(sorted(upward))


def _scripts() -> dict[str, str]:
    with (REPO / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]["scripts"]


def test_the_distribution_declares_the_three_commands() -> None:
    assert set(_scripts()) == {"clustertui", "clusterctl", "clusterd"}


@pytest.mark.parametrize("command", ["clustertui", "clusterctl", "clusterd"])
def test_every_command_answers_help_with_its_usage(command: str) -> None:
    module, function = _scripts()[command].split(":")
    code = f"import sys; from {module} import {function} as main; sys.argv[0] = {command!r}; main()"
    result = subprocess.run(
        [sys.executable, "-c", code, "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {command}")


@pytest.mark.parametrize("subcommand", ["kv", "node", "overlay", "cat", "journal", "demo"])
def test_every_clusterd_subcommand_answers_help(subcommand: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "clustertui.backend.daemon", subcommand, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: clusterd {subcommand}")
