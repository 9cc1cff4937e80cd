"""Provides real etcd members and clusters on loopback, started and stopped by PID."""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.procs import Child, OwnsChild, find_tool, free_port


@dataclass
class TLSFiles:
    """Server-side TLS material for an etcd member."""

    cert: Path
    key: Path
    ca: Path
    client_cert_auth: bool = False


@dataclass
class EtcdMember(OwnsChild):
    """One real etcd process; ``url`` is its client URL."""

    name: str
    data_dir: Path
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    tls: TLSFiles | None = None
    extra: list[str] = field(default_factory=list)
    child: Child | None = None
    kind: str = "etcd"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def argv(self, initial_cluster: str, state: str = "new") -> list[str]:
        token = "tok-" + initial_cluster.split("=", 2)[1].rsplit(":", 1)[-1].split(",")[0]
        argv = [
            find_tool("etcd"),
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", token,
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        if self.tls:
            argv += ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key)]
            # etcd demands client certificates whenever it is given a trusted CA file.
            if self.tls.client_cert_auth:
                argv += ["--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"]
        return argv + self.extra

    def start(self, initial_cluster: str | None = None) -> EtcdMember:
        cluster = initial_cluster or f"{self.name}={self.peer_url}"
        self.child = Child(self.name, self.argv(cluster), self.data_dir.parent / f"{self.name}.log")
        self.child.start()
        return self

    def healthy(self) -> bool:
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls.ca))
            if self.tls.client_cert_auth:
                return self.child is not None and self.child.alive() and _tcp_open(self)
        with urllib.request.urlopen(f"{self.url}/health", timeout=1, context=context) as answer:
            return json.load(answer).get("health") == "true"

    def wait_ready(self, timeout: float = 30.0) -> EtcdMember:
        assert self.child is not None
        self.child.wait_until(self.healthy, timeout)
        return self


def _tcp_open(member: EtcdMember) -> bool:
    from tests.harness.procs import port_open

    return port_open(member.client_port)


def start_etcd(root: Path, name: str = "etcd0", tls: TLSFiles | None = None) -> EtcdMember:
    """A single-member real etcd, answering its health check."""
    member = EtcdMember(name=name, data_dir=root / name, tls=tls)
    return member.start().wait_ready()


@dataclass
class EtcdCluster:
    """A real multi-member etcd cluster on loopback."""

    members: list[EtcdMember]

    @property
    def urls(self) -> list[str]:
        return [member.url for member in self.members]

    def stop(self) -> None:
        for member in self.members:
            member.stop()


def start_etcd_cluster(root: Path, size: int = 3) -> EtcdCluster:
    members = [EtcdMember(name=f"m{i}", data_dir=root / f"m{i}") for i in range(size)]
    initial = ",".join(f"{m.name}={m.peer_url}" for m in members)
    for member in members:
        member.start(initial)
    for member in members:
        member.wait_ready(60)
    return EtcdCluster(members)
