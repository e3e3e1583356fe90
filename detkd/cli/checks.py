"""Range checks of CLI numbers that Ultralytics or torch would otherwise reject with a traceback, or only after the
work is done (one line, exit 2, before anything runs)."""

from __future__ import annotations

from pathlib import Path

from detkd.errors import ConfigError


def check_ranges(args, positive: tuple[str, ...] = (), unit: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = (), above_zero: tuple[str, ...] = ()) -> None:
    """Refuse ``positive`` ints below 1, ``unit`` thresholds outside [0, 1], ``non_negative`` numbers below 0 and
    ``above_zero`` numbers not above 0 (attribute names of ``args``, shown as their flags; a list value, from a flag
    that takes several numbers, is checked number by number)."""
    rules = [(positive, lambda v: v >= 1, "must be at least 1"),
             (unit, lambda v: 0.0 <= v <= 1.0, "must be a threshold in [0, 1]"),
             (non_negative, lambda v: v >= 0, "must be >= 0"),
             (above_zero, lambda v: v > 0, "must be above 0")]
    for names, ok, rule in rules:
        for name in names:
            value = getattr(args, name)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v is not None and not ok(v):
                    raise ConfigError(f"--{name.replace('_', '-')} {v} {rule}.")


def check_output_file(path, flag: str, example: str) -> None:
    """``path`` (a file the command will write) must not be an existing folder (it would fail after the work)."""
    if path is not None and Path(path).is_dir():
        raise ConfigError(f"{flag} {path} is a folder: give a file path, e.g. {Path(path) / example}.")
