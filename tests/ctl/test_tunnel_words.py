"""clusterctl's tunnel (issue 13): whose login, and errors that say which thing is wrong."""

from __future__ import annotations

from pathlib import Path

from clustertui.backend.etcd import AuthFailed, StoreTimeout, error_words
from clustertui.backend.fleet.registry import Registry
from tests.ctl.conftest import CtlRunner
from tests.ctl.test_ctl import _ssh_flags, cli, seed
from tests.harness.etcd import TLSFiles, start_etcd
from tests.harness.pki import CA
from tests.harness.sshd import SSHServer, keygen


def _flag(flags: list[str], name: str, value: str) -> list[str]:
    flags = list(flags)
    flags[flags.index(name) + 1] = value
    return flags


async def test_the_user_in_the_tunnel_spec_wins_over_the_ssh_username_default(
    ctl: CtlRunner, registry: Registry, sshd: SSHServer
) -> None:
    """#13.1: `--tunnel user@host` logs in as user, whatever --ssh-username says."""
    await seed(registry)
    flags = _flag(_ssh_flags(sshd), "--ssh-username", "core-nobody")
    result = await ctl(*flags, "--tunnel", sshd.spec, "list-machines", "--no-legend")
    assert result.code == 0, result.err
    assert len(result.rows) == 2


async def test_a_refused_key_names_clusterctls_own_identity_flag(
    ctl: CtlRunner, sshd: SSHServer, tmp_path: Path
) -> None:
    other = keygen(tmp_path / "other_key", "not-authorized")
    flags = _flag(_ssh_flags(sshd), "--ssh-identity-file", str(other))
    result = await ctl(*flags, "--tunnel", sshd.spec, "list-machines")
    assert result.code == 1
    assert "--ssh-identity-file" in result.err
    assert "--identity," not in result.err


async def test_an_unknown_host_key_says_not_listed_and_names_the_file_read(
    ctl: CtlRunner, sshd: SSHServer, tmp_path: Path
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    flags = _flag(_ssh_flags(sshd), "--known-hosts-file", str(empty))
    result = await ctl(*flags, "--tunnel", sshd.spec, "list-machines")
    assert result.code == 1
    assert f"it is not listed in {empty}" in result.err
    assert "or it changed" not in result.err


async def test_a_changed_host_key_says_changed(
    ctl: CtlRunner, sshd: SSHServer, tmp_path: Path
) -> None:
    other = keygen(tmp_path / "other_host", "impostor")
    kind, key = Path(f"{other}.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd.host}]:{sshd.port} {kind} {key}\n")
    flags = _flag(_ssh_flags(sshd), "--known-hosts-file", str(known))
    result = await ctl(*flags, "--tunnel", sshd.spec, "list-machines")
    assert result.code == 1
    assert f"it CHANGED: another key is listed for it in {known}" in result.err


async def test_an_absent_known_hosts_default_is_named_beside_the_file_read(
    ctl: CtlRunner, sshd: SSHServer, tmp_path: Path
) -> None:
    absent = tmp_path / "fleetctl" / "known_hosts"
    flags = _flag(_ssh_flags(sshd), "--known-hosts-file", str(absent))
    result = await ctl(*flags, "--tunnel", sshd.spec, "list-machines")
    assert result.code == 1
    assert f"({absent} does not exist, so ssh's file was read)" in result.err
    assert f">> {absent}`" in result.err


def test_tls_and_timeout_errors_name_their_cause_and_next_step(tmp_path: Path) -> None:
    """One function words every store error, for clusterctl and the console alike."""
    ca = CA(tmp_path / "pki")
    other = CA(tmp_path / "other")
    server = ca.issue("etcd-server", server=True)
    member = start_etcd(tmp_path, tls=TLSFiles(server.cert, server.key, ca.path, False))
    try:
        wrong = cli("--endpoint", member.url, "--ca-file", str(other.path), "list-machines", env={})
        assert wrong.returncode == 1
        last = wrong.stderr.splitlines()[-1]
        assert last.startswith(f"Error: the TLS handshake with {member.url} failed"), last
        assert last.endswith("check --cacert, --cert and --key against the server's certificate")
    finally:
        member.stop()
    timeout = StoreTimeout("Deadline Exceeded")
    words = error_words(timeout, ["http://10.0.0.1:2379"], timeout=3, waited_for="the status")
    assert words == (
        "http://10.0.0.1:2379 gave no answer within 3 s while waiting for the status; "
        "is the store overloaded, or a member down?"
    )
    auth = error_words(AuthFailed("authentication failed"), ["http://a:1"])
    assert auth.startswith("the store at http://a:1 refused the credentials")
