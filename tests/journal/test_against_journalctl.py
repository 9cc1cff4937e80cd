"""Our output against the installed journalctl's, live: same entries, every format."""

# A private journald (in a mount namespace of its own, so the machine's logging is not
# touched) receives the samples of ``private_journald``; its export is imported into our
# journal, and journalctl's outputs are compared with ours. This needs journalctl,
# systemd-journald, root and ``unshare``; the fixture tests cover machines without them.

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clustertui.backend.journal.fmt import parse_json
from tests.harness.procs import REPO
from tests.journal.conftest import UNCOMPARABLE, Run, import_export, objects
from tests.journal.private_journald import OUTPUTS, SAMPLES

# Formats that show each entry's cursor, which no two journals share.
_WITH_CURSORS = ("json", "export", "verbose")
_VERBOSE_CURSOR = re.compile(rb" \[s=[^\]\n]*\]\n")


def _namespaces_work() -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    return subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0


pytestmark = pytest.mark.skipif(
    not (
        shutil.which("journalctl")
        and Path("/lib/systemd/systemd-journald").exists()
        and _namespaces_work()
    ),
    reason="needs journalctl, systemd-journald, root and unshare (mount namespaces)",
)


@pytest.fixture(scope="module")
def journalctl_outputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outdir = tmp_path_factory.mktemp("journalctl")
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-m",
         "tests.journal.private_journald", str(outdir)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return outdir


@pytest.fixture
def ours(journalctl_outputs: Path, tmp_path: Path, in_process: Run) -> Run:
    import_export(tmp_path, (journalctl_outputs / "export").read_bytes())

    def run(*flags: str) -> subprocess.CompletedProcess[bytes]:
        return in_process("journal", "--data-dir", str(tmp_path), *flags)

    return run


def test_journalctl_saw_every_sample(journalctl_outputs: Path) -> None:
    entries = [parse_json(line) for line in (journalctl_outputs / "json").read_bytes().splitlines()]
    assert [e["PRIORITY"] for e in entries] == [str(p).encode() for p, _ in SAMPLES]
    long = [message for _, message in SAMPLES if len(message) >= 4096]
    expected = [None if m in long else m for _, m in SAMPLES]
    assert [e["MESSAGE"] for e in entries] == expected


@pytest.mark.parametrize("name", [n for n in OUTPUTS if not n.startswith(_WITH_CURSORS)])
def test_text_formats_match_the_installed_journalctl(
    ours: Run, journalctl_outputs: Path, name: str
) -> None:
    result = ours(*OUTPUTS[name])
    assert result.returncode == 0, result.stderr
    assert result.stdout == (journalctl_outputs / name).read_bytes()


@pytest.mark.parametrize("name", ["json", "json-all", "json-seq"])
def test_json_matches_the_installed_journalctl(
    ours: Run, journalctl_outputs: Path, name: str
) -> None:
    result = ours(*OUTPUTS[name])
    theirs = (journalctl_outputs / name).read_bytes()
    assert objects(result.stdout) == objects(theirs)
    ours_parsed = [parse_json(line) for line in result.stdout.splitlines()]
    theirs_parsed = [parse_json(line) for line in theirs.splitlines()]
    assert [{k: v for k, v in e.items() if k not in UNCOMPARABLE} for e in ours_parsed] == [
        {k: v for k, v in e.items() if k not in UNCOMPARABLE} for e in theirs_parsed
    ]


def _without_uncomparable_export_lines(export: bytes) -> bytes:
    return b"".join(
        line
        for line in export.splitlines(keepends=True)
        if line.partition(b"=")[0].decode(errors="replace") not in UNCOMPARABLE
    )


@pytest.mark.parametrize("name", [n for n in OUTPUTS if n.startswith("export")])
def test_export_matches_the_installed_journalctl(
    ours: Run, journalctl_outputs: Path, name: str
) -> None:
    result = ours(*OUTPUTS[name])
    assert result.returncode == 0, result.stderr
    theirs = (journalctl_outputs / name).read_bytes()
    assert result.stdout.count(b"\n__CURSOR=") == theirs.count(b"\n__CURSOR=")
    assert _without_uncomparable_export_lines(result.stdout) == (
        _without_uncomparable_export_lines(theirs)
    )


def _comparable_verbose(output: bytes) -> bytes:
    """Verbose output with each cursor replaced, and without the boot ID lines.

    journald's export (which our journal was filled from) moves ``_BOOT_ID`` ahead of
    the other fields, so ours is first where journalctl shows it among the others.
    """
    output = _VERBOSE_CURSOR.sub(b" [cursor]\n", output)
    return b"".join(
        line for line in output.splitlines(keepends=True) if not line.startswith(b"    _BOOT_ID=")
    )


@pytest.mark.parametrize("name", [n for n in OUTPUTS if n.startswith("verbose")])
def test_verbose_matches_the_installed_journalctl(
    ours: Run, journalctl_outputs: Path, name: str
) -> None:
    result = ours(*OUTPUTS[name])
    assert result.returncode == 0, result.stderr
    theirs = (journalctl_outputs / name).read_bytes()
    assert result.stdout.count(b"\n    _BOOT_ID=") == theirs.count(b"\n    _BOOT_ID=") > 0
    assert _comparable_verbose(result.stdout) == _comparable_verbose(theirs)
