"""Provides the file modes the backends create their files with, and the helpers that apply them.

The modes are etcd's and journald's:

* the store's data directory and everything in it: directories 0700, files 0600 (etcd's
  ``PrivateDirMode`` and ``PrivateFileMode``);
* a journal: directory 0750, segments and the other files in it 0640 (journald's modes; it
  also makes the directory setgid with group ``systemd-journal``, a group we do not have);
* a node's data directory 0711: only its owner lists it, while the files meant to be read
  by others (flannel's ``subnet.env``, 0644 as flanneld writes it; the journal, for its
  group) stay reachable; its private parts (``run/``) are 0700 themselves.

Every file and directory is created with its mode passed to ``open(2)``/``mkdir(2)``, so the
umask can only take bits away, never add them; an existing one that is looser than it should
be is tightened (only the extra bits are removed) with a warning. The one file set to its
mode whatever the umask is ``subnet.env``, as flanneld does: it is there to be read.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

TYPE_CHECKING = False  # typing's own costs the light journal reader its start-up
if TYPE_CHECKING:
    import logging

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
JOURNAL_DIR = 0o750
JOURNAL_FILE = 0o640
NODE_DIR = 0o711
PUBLIC_FILE = 0o644


def mode_string(mode: int) -> str:
    """``drwxr-xr-x``, as etcd's warning shows a mode."""
    return stat.filemode(mode)


def make_dirs(path: Path, mode: int) -> bool:
    """Create ``path`` and every missing parent with ``mode``; True if ``path`` was created.

    (``os.makedirs`` gives the parents the umask's default mode, which is usually 0755.)
    """
    path = Path(path)
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not directory.is_dir():
                raise
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a directory")
    return bool(missing)


def perm_string(mode: int) -> str:
    """``-rwx------``: a permission as Go prints an ``os.FileMode`` without its type."""
    return "-" + stat.filemode(mode)[1:]


def tighten(path: Path, mode: int, log: logging.Logger | None = None) -> bool:
    """Take from ``path`` the permission bits ``mode`` does not allow; True if it had any.

    Says so in etcd's words (``check file permission: directory "…" exist, but the
    permission is "drwxr-xr-x". The recommended permission is "-rwx------" …``); etcd only
    warns, we also tighten. A file we cannot change (another user's) is left as it is.
    """
    try:
        info = os.stat(path)  # a data dir that is a symlink: the directory it points to
    except FileNotFoundError:
        return False
    current = stat.S_IMODE(info.st_mode)
    if not current & ~mode:
        return False
    kind = "directory" if stat.S_ISDIR(info.st_mode) else "file"
    try:
        os.chmod(path, current & mode)
        done = f"; tightened it to {perm_string(current & mode)}"
    except PermissionError as error:
        done = f"; cannot tighten it: {error.strerror}"
    if log is not None:
        log.warning(
            'check file permission: %s "%s" exist, but the permission is "%s". The recommended '
            'permission is "%s" to prevent possible unprivileged access to the data%s',
            kind,
            path,
            mode_string(info.st_mode),
            perm_string(mode),
            done,
        )
    return True


def ensure_dir(path: Path, mode: int, log: logging.Logger | None = None) -> None:
    """``path`` exists as a directory no looser than ``mode`` (created so, or tightened)."""
    if not make_dirs(path, mode):
        tighten(path, mode, log)


def tighten_files(directory: Path, mode: int, log: logging.Logger | None = None) -> int:
    """Tighten every regular file directly in ``directory`` to ``mode``; how many were loose.

    One warning for them all, not one per file: an old data directory has many.
    """
    loose = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.is_file(follow_symlinks=False) and tighten(Path(entry.path), mode):
            loose += 1
    if loose and log is not None:
        log.warning(
            'check file permission: %d files in "%s" were looser than "%s"; tightened them',
            loose,
            directory,
            perm_string(mode),
        )
    return loose


def open_new(path: Path, mode: int, flags: int = os.O_WRONLY | os.O_TRUNC) -> int:
    """A descriptor on ``path``, created with ``mode`` if it does not exist."""
    return os.open(path, flags | os.O_CREAT | os.O_CLOEXEC, mode)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path``, creating it with ``mode`` (an existing file is truncated)."""
    fd = open_new(path, mode)
    try:
        current = stat.S_IMODE(os.fstat(fd).st_mode)
        if current & ~mode:  # made by an older version, or by someone else
            os.fchmod(fd, current & mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
