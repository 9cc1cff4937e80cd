"""Provides the bundled store (`clusterd kv`) as a child process, started, crashed and restarted."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.etcd import TLSFiles
from tests.harness.procs import REPO, Child, OwnsChild, free_port, port_open


@dataclass
class BundledStore(OwnsChild):
    """One `clusterd kv` process; ``url`` is its client URL."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    tls: TLSFiles | None = None
    child: Child | None = None
    kind: str = "bundled"

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        tls = []
        if self.tls:
            tls = ["--cert-file", str(self.tls.cert), "--key-file", str(self.tls.key)]
            tls += ["--trusted-ca-file", str(self.tls.ca)]
            if self.tls.client_cert_auth:
                tls.append("--client-cert-auth")
        return [
            sys.executable, "-m", "clustertui.backend.daemon", "kv",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url,
            # etcd's harness timing, hence the same minimum lease TTL.
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
            *tls,
            *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> BundledStore:
        log = self.data_dir.parent / f"{self.data_dir.name}.log"
        already = log.stat().st_size if log.exists() else 0
        self.child = Child("clusterd kv", self.argv(), log, cwd=REPO)
        self.child.start()

        def serving() -> bool:
            # The port can answer a moment before the start-up line is written; tests read it.
            with log.open("rb") as handle:
                handle.seek(already)
                return b"serving" in handle.read() and port_open(self.port)

        self.child.wait_until(serving, timeout)
        return self

    def restart(self) -> BundledStore:
        """Start again on the same data directory and port (after stop or kill)."""
        self.stop()
        return self.start()

    def output(self) -> str:
        return self.child.output() if self.child else ""


def start_bundled(
    root: Path, extra: list[str] | None = None, tls: TLSFiles | None = None
) -> BundledStore:
    """A `clusterd kv` on a free loopback port, answering connections."""
    return BundledStore(data_dir=root / "kv", extra=list(extra or []), tls=tls).start()
