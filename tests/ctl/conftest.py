"""Fixtures for clusterctl tests: a registry under the test's prefix and an in-process runner."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from clustertui.backend.etcd import EtcdClient
from clustertui.backend.fleet.registry import Registry
from clustertui.console.ctl import apply_environment, build_parser, execute
from tests.fleet.conftest import NodeFactory
from tests.harness.stores import RunningStore


@dataclass
class Result:
    """What one clusterctl invocation printed and returned."""

    code: int
    out: str
    err: str

    @property
    def rows(self) -> list[list[str]]:
        """The output split into lines and tab-separated cells (fleetctl pads with tabs)."""
        return [[c for c in line.split("\t") if c] for line in self.out.splitlines()]


class CtlRunner:
    """Runs clusterctl in-process against one store and key prefix."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url = url
        self.prefix = prefix

    async def __call__(self, *argv: str, env: dict[str, str] | None = None) -> Result:
        base = ["--endpoint", self.url, "--key-prefix", self.prefix, "--request-timeout", "5"]
        args = build_parser().parse_args([*base, *argv])
        apply_environment(args, env or {})
        out, err = io.StringIO(), io.StringIO()
        code = await execute(args, out, err)
        return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def prefix(ns: bytes) -> str:
    return ns.decode() + "fleet/"


@pytest.fixture
def registry(kv: EtcdClient, prefix: str) -> Registry:
    return Registry(kv, prefix)


@pytest.fixture
def ctl(store: RunningStore, prefix: str) -> CtlRunner:
    return CtlRunner(store.url, prefix)


@pytest.fixture
def nodes(store: RunningStore, prefix: str, tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(store.url, prefix, tmp_path / "nodes")
    yield factory
    factory.stop_all()
