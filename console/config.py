"""Provides the console's settings: config.yaml (named clusters, keymap, theme), flags and env."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from clustertui.backend.etcd import DEFAULT_ENDPOINT

DEFAULT_THEME = "textual-dark"

CLUSTER_FIELDS = {
    "endpoints": "list",
    "tunnel": "str",
    "ssh_username": "str",
    "identity": "str",
    "known_hosts_file": "str",
    "strict_host_key_checking": "bool",
    "cacert": "str",
    "cert": "str",
    "key": "str",
    "read_only": "bool",
}


class ConfigFileError(Exception):
    """The config file is unusable; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class ClusterSettings:
    """How to reach one cluster and what the console may do there."""

    name: str = "default"
    endpoints: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    tunnel: str | None = None
    ssh_username: str | None = None
    identity: str | None = None
    known_hosts_file: str | None = None
    strict_host_key_checking: bool = True
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    read_only: bool = False


@dataclass(frozen=True)
class ConsoleConfig:
    """What config.yaml holds."""

    path: Path | None = None
    clusters: dict[str, ClusterSettings] = field(default_factory=dict)
    default_cluster: str | None = None
    keymap: dict[str, str] = field(default_factory=dict)
    """Binding id to comma-separated keys, e.g. ``{"keys.delete": "x"}``."""
    theme: str = DEFAULT_THEME


def default_config_path() -> Path:
    return Path(platformdirs.user_config_dir("clustertui")) / "config.yaml"


def _fail(path: Path, node: yaml.Node | None, problem: str) -> ConfigFileError:
    line = f", line {node.start_mark.line + 1}" if node is not None else ""
    return ConfigFileError(f"{path}{line}: {problem}")


def _scalar(path: Path, node: yaml.Node, kind: str, what: str) -> object:
    if kind == "list":
        if isinstance(node, yaml.ScalarNode):
            return tuple(p.strip() for p in str(node.value).split(",") if p.strip())
        if not isinstance(node, yaml.SequenceNode) or not all(
            isinstance(item, yaml.ScalarNode) for item in node.value
        ):
            raise _fail(path, node, f"{what} must be a list of URLs")
        return tuple(str(item.value) for item in node.value)
    if not isinstance(node, yaml.ScalarNode):
        raise _fail(path, node, f"{what} must be a single value")
    if kind == "bool":
        lowered = str(node.value).lower()
        if lowered not in ("true", "false", "yes", "no"):
            raise _fail(path, node, f"{what} must be true or false, not {node.value!r}")
        return lowered in ("true", "yes")
    return str(node.value)


def _mapping(path: Path, node: yaml.Node, what: str) -> list[tuple[yaml.Node, yaml.Node]]:
    if not isinstance(node, yaml.MappingNode):
        raise _fail(path, node, f"{what} must be a mapping of names to values")
    return list(node.value)


def load_config(path: Path | None = None) -> ConsoleConfig:
    """Read config.yaml; a missing file is an empty config, a bad one a :class:`ConfigFileError`."""
    path = path or default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ConsoleConfig()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"{path}: cannot read it: {error}") from error
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark
        line = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigFileError(f"{path}{line}: {error.problem or error}") from error
    if root is None:
        return ConsoleConfig(path=path)
    clusters: dict[str, ClusterSettings] = {}
    keymap: dict[str, str] = {}
    theme = DEFAULT_THEME
    default_cluster = None
    default_node = None
    for key_node, value_node in _mapping(path, root, "the file"):
        section = str(key_node.value)
        if section == "clusters":
            for name_node, cluster_node in _mapping(path, value_node, "clusters"):
                # Each value has its field's type: _scalar checks it by CLUSTER_FIELDS at run time.
                values: dict[str, Any] = {}
                for field_node, field_value in _mapping(path, cluster_node, name_node.value):
                    name = str(field_node.value).replace("-", "_")
                    if name not in CLUSTER_FIELDS:
                        known = ", ".join(CLUSTER_FIELDS)
                        raise _fail(path, field_node, f"unknown cluster setting {name!r} ({known})")
                    values[name] = _scalar(path, field_value, CLUSTER_FIELDS[name], name)
                clusters[str(name_node.value)] = ClusterSettings(
                    name=str(name_node.value), **values
                )
        elif section == "keymap":
            for id_node, keys_node in _mapping(path, value_node, "keymap"):
                keymap[str(id_node.value)] = str(_scalar(path, keys_node, "str", id_node.value))
        elif section == "theme":
            theme = str(_scalar(path, value_node, "str", "theme"))
        elif section == "default_cluster":
            default_cluster = str(_scalar(path, value_node, "str", "default_cluster"))
            default_node = value_node
        else:
            raise _fail(
                path,
                key_node,
                f"unknown section {section!r} (clusters, default_cluster, keymap, theme)",
            )
    if default_cluster is not None and default_cluster not in clusters:
        raise _fail(
            path, default_node, f"default_cluster {default_cluster!r} is not under clusters"
        )
    return ConsoleConfig(path, clusters, default_cluster, keymap, theme)


def _truthy(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


def add_connection_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that say how to reach a cluster (shared by every console command)."""
    parser.add_argument("--endpoints", help="store URLs, comma-separated")
    parser.add_argument("--tunnel", help="[user@]host[:port] to reach the store through SSH")
    parser.add_argument("--ssh-username", help="user name on the tunnel host")
    parser.add_argument("--identity", help="SSH private key for the tunnel")
    parser.add_argument("--known-hosts-file", help="known_hosts file for the tunnel host")
    parser.add_argument(
        "--strict-host-key-checking",
        metavar="true|false",
        help="check the tunnel host's key against known_hosts (default true)",
    )
    parser.add_argument("--cacert", help="CA bundle that signs the store's certificate")
    parser.add_argument("--cert", help="client certificate for the store")
    parser.add_argument("--key", help="client key for the store")
    parser.add_argument("--cluster", help="a cluster named in config.yaml")
    parser.add_argument("--read-only", action="store_true", default=None, help="allow no writes")


_FLAGS = ("endpoints", "tunnel", "ssh_username", "identity", "known_hosts_file",
          "strict_host_key_checking", "cacert", "cert", "key", "cluster", "read_only")  # fmt: skip


def resolve_cluster(
    args: argparse.Namespace,
    config: ConsoleConfig,
    environ: Mapping[str, str] = os.environ,
) -> ClusterSettings:
    """Merge flags over CLUSTERTUI_* (then FLEETCTL_*) over the named cluster over defaults."""
    given: dict[str, object] = {}
    for flag in _FLAGS:
        value = getattr(args, flag, None)
        if value is None:
            value = environ.get(f"CLUSTERTUI_{flag.upper()}") or None
        if value is None and flag == "tunnel":
            value = environ.get("FLEETCTL_TUNNEL") or None
        if value is None and flag == "endpoints":
            value = environ.get("FLEETCTL_ENDPOINT") or None
        if value is not None:
            given[flag] = value
    name = given.pop("cluster", None) or config.default_cluster
    if name is not None:
        if name not in config.clusters:
            where = config.path or default_config_path()
            known = ", ".join(config.clusters) or "none"
            raise ConfigFileError(f"{where}: no cluster named {name!r} (known: {known})")
        base = config.clusters[str(name)]
    else:
        base = ClusterSettings()
    # Each change has its field's type: endpoints a tuple, the two flags a bool, the rest str.
    changes: dict[str, Any] = {}
    for flag, value in given.items():
        if flag == "endpoints":
            changes[flag] = _endpoints(value)
        elif flag in ("strict_host_key_checking", "read_only"):
            try:
                changes[flag] = value if isinstance(value, bool) else _truthy(str(value))
            except ValueError as error:
                raise ConfigFileError(f"--{flag.replace('_', '-')}: {error}") from error
        else:
            changes[flag] = str(value)
    return replace(base, **changes)


def _endpoints(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, Iterable):
        return tuple(str(part) for part in value)
    raise TypeError(f"endpoints must be a string or a list of them, not {value!r}")


def parse_keymap(keymap: Mapping[str, str]) -> dict[str, str]:
    """Keymap entries as Textual's ``App.set_keymap`` takes them."""
    return {binding_id: keys.replace(" ", "") for binding_id, keys in keymap.items()}
