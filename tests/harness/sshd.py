"""Provides a real OpenSSH sshd on loopback, and an in-process asyncssh server for quick tests."""

from __future__ import annotations

import getpass
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from tests.harness.procs import Child, find_tool, free_port, port_open


@dataclass
class SSHServer:
    """Where a test SSH server listens and the files a client needs to reach it."""

    host: str
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    host_key_pub: Path
    child: Child | None = None

    @property
    def spec(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def stop(self) -> None:
        if self.child:
            self.child.stop()


def keygen(path: Path, comment: str) -> Path:
    subprocess.run(
        [find_tool("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
    )
    return path


def start_sshd(root: Path) -> SSHServer:
    """A real sshd on 127.0.0.1 with its own keys; only our client key may log in."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    host_key = keygen(root / "ssh_host_ed25519_key", "test-host")
    client_key = keygen(root / "id_ed25519", "test-client")
    authorized = root / "authorized_keys"
    authorized.write_text(Path(f"{client_key}.pub").read_text())
    authorized.chmod(0o600)
    host_pub = Path(f"{host_key}.pub").read_text().split()
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                f"PidFile {root / 'sshd.pid'}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "AllowTcpForwarding yes",
                "PermitTTY yes",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    child = Child("sshd", [find_tool("sshd"), "-D", "-e", "-f", str(config)], root / "sshd.log")
    child.start().wait_until(lambda: port_open(port), timeout=15)
    return SSHServer(
        host="127.0.0.1",
        port=port,
        user=getpass.getuser(),
        client_key=client_key,
        known_hosts=known_hosts,
        host_key_pub=Path(f"{host_key}.pub"),
        child=child,
    )


class _ForwardingServer(asyncssh.SSHServer):
    """Accepts our one client key and allows direct TCP forwarding, nothing else."""

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int):
        return True


async def start_asyncssh_server(root: Path) -> tuple[asyncssh.SSHAcceptor, SSHServer]:
    """An in-process SSH server that allows port forwarding, for fast unit tests."""
    root.mkdir(parents=True, exist_ok=True)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_path = root / "id_ed25519"
    client_key.write_private_key(str(client_path))
    client_path.chmod(0o600)
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    acceptor = await asyncssh.listen(
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        authorized_client_keys=authorized,
        server_factory=_ForwardingServer,
        allow_scp=False,
    )
    port = acceptor.sockets[0].getsockname()[1]
    known_hosts = root / "known_hosts"
    public = host_key.export_public_key().decode().strip()
    known_hosts.write_text(f"[127.0.0.1]:{port} {public}\n")
    host_pub = root / "host_key.pub"
    host_pub.write_text(public + "\n")
    server = SSHServer("127.0.0.1", port, getpass.getuser(), client_path, known_hosts, host_pub)
    return acceptor, server
