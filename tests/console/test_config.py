"""Tests of the console's settings: config.yaml, flags, CLUSTERTUI_* and FLEETCTL_* variables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clustertui.console.app import build_parser
from clustertui.console.config import ConfigFileError, load_config, resolve_cluster
from tests.harness.procs import REPO

GOOD = """\
default_cluster: prod
theme: nord
clusters:
  prod:
    endpoints: [http://10.0.0.1:2379, http://10.0.0.2:2379]
    tunnel: core@10.2.1.1
    identity: ~/.ssh/prod
    read_only: true
  lab:
    endpoints: http://lab:2379
keymap:
  keys.delete: x
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_a_missing_config_file_is_an_empty_config(tmp_path: Path) -> None:
    config = load_config(tmp_path / "absent.yaml")
    assert config.clusters == {} and config.keymap == {}


def test_named_clusters_keymap_and_theme_load(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.theme == "nord"
    assert config.keymap == {"keys.delete": "x"}
    prod = config.clusters["prod"]
    assert prod.endpoints == ("http://10.0.0.1:2379", "http://10.0.0.2:2379")
    assert prod.tunnel == "core@10.2.1.1" and prod.read_only
    assert config.clusters["lab"].endpoints == ("http://lab:2379",)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("clusters:\n  prod:\n    endpoints: [a\n", 4, "expected"),
        ("clusters:\n  prod:\n    tunel: x\n", 3, "unknown cluster setting 'tunel'"),
        ("clusters:\n  prod:\n    read_only: maybe\n", 3, "true or false"),
        ("theme: nord\ncolours: 3\n", 2, "unknown section 'colours'"),
        ("default_cluster: nope\nclusters: {}\n", 1, "not under clusters"),
    ],
)
def test_a_bad_config_names_the_file_line_and_problem(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}, line {line}: ")
    assert problem in message


def test_flags_beat_environment_beats_the_named_cluster(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    args = build_parser().parse_args(["--tunnel", "me@flag-host"])
    env = {"CLUSTERTUI_TUNNEL": "env-host", "CLUSTERTUI_ENDPOINTS": "http://env:2379"}
    settings = resolve_cluster(args, config, env)
    assert settings.name == "prod"
    assert settings.tunnel == "me@flag-host"
    assert settings.endpoints == ("http://env:2379",)
    assert settings.identity == "~/.ssh/prod" and settings.read_only


def test_fleetctl_variables_are_fallbacks() -> None:
    config = load_config(Path("/nonexistent/config.yaml"))
    args = build_parser().parse_args([])
    env = {"FLEETCTL_TUNNEL": "10.2.1.1", "FLEETCTL_ENDPOINT": "http://10.2.1.1:2379"}
    settings = resolve_cluster(args, config, env)
    assert settings.tunnel == "10.2.1.1"
    assert settings.endpoints == ("http://10.2.1.1:2379",)
    env["CLUSTERTUI_TUNNEL"] = "preferred"
    assert resolve_cluster(args, config, env).tunnel == "preferred"


def test_strict_host_key_checking_takes_true_or_false() -> None:
    config = load_config(Path("/nonexistent/config.yaml"))
    args = build_parser().parse_args(["--strict-host-key-checking=false"])
    assert resolve_cluster(args, config, {}).strict_host_key_checking is False
    args = build_parser().parse_args(["--strict-host-key-checking=perhaps"])
    with pytest.raises(ConfigFileError, match="not true or false"):
        resolve_cluster(args, config, {})


def test_the_command_line_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    path = write(tmp_path, "clusters:\n  prod:\n    endpoints: [a\n")
    result = subprocess.run(
        [sys.executable, "-m", "clustertui.console.app", "--config", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"{path}, line 4" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_command_line_reports_an_unknown_cluster(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "clustertui.console.app",
            "--config",
            str(path),
            "--cluster",
            "nope",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "no cluster named 'nope' (known: prod, lab)" in result.stderr


def test_every_console_flag_has_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLUSTERTUI_PREFIX", "/config/")
    monkeypatch.setenv("CLUSTERTUI_DEMO", "true")
    monkeypatch.setenv("CLUSTERTUI_CONFIG", "/etc/clustertui.yaml")
    args = build_parser().parse_args([])
    assert (args.prefix, args.demo, args.config) == ("/config/", True, "/etc/clustertui.yaml")
    assert build_parser().parse_args(["--prefix", "/x/"]).prefix == "/x/"
