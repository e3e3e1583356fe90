"""Checks of CLI paths that would otherwise fail only after the work is done (one line, exit 2, before anything runs);
numbers: :mod:`detkd.ranges`."""

from __future__ import annotations

from pathlib import Path

from detkd.errors import ConfigError


def check_output_file(path, flag: str, example: str) -> None:
    """``path`` (a file the command will write) must not be an existing folder (it would fail after the work)."""
    if path is not None and Path(path).is_dir():
        raise ConfigError(f"{flag} {path} is a folder: give a file path, e.g. {Path(path) / example}.")
