"""Range checks of CLI numbers that Ultralytics or torch would otherwise reject with a traceback, or only after the
work is done (one line, exit 2, before anything runs)."""

from __future__ import annotations

from detkd.errors import ConfigError


def check_ranges(args, positive: tuple[str, ...] = (), unit: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = ()) -> None:
    """Refuse ``positive`` ints below 1, ``unit`` thresholds outside [0, 1] and ``non_negative`` numbers below 0
    (attribute names of ``args``, shown as their flags)."""
    def flag(name):
        return "--" + name.replace("_", "-")

    for name in positive:
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ConfigError(f"{flag(name)} {getattr(args, name)} must be at least 1.")
    for name in unit:
        if getattr(args, name) is not None and not 0.0 <= getattr(args, name) <= 1.0:
            raise ConfigError(f"{flag(name)} {getattr(args, name)} must be a threshold in [0, 1].")
    for name in non_negative:
        if getattr(args, name) is not None and getattr(args, name) < 0:
            raise ConfigError(f"{flag(name)} {getattr(args, name)} must be >= 0.")
