"""Provides clustertui's version, which is written in one place: pyproject.toml's
``[project] version``, read back from the installed distribution's metadata."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "clustertui"

try:
    VERSION = version(DISTRIBUTION)
except PackageNotFoundError:  # run from a checkout that was never installed
    VERSION = "0+unknown"
