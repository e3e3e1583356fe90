"""Range checks of numbers a user gives (CLI flags, compare's settings), shown as the flag the user typed: one line
(:class:`ConfigError`, exit 2) before any work, where Ultralytics or torch would refuse them with a traceback or only
after the work is done."""

from __future__ import annotations

from detkd.errors import ConfigError

RULES = {"positive": (lambda v: v >= 1, "must be at least 1"),
         "unit": (lambda v: 0.0 <= v <= 1.0, "must be a threshold in [0, 1]"),
         "non_negative": (lambda v: v >= 0, "must be >= 0"),
         "above_zero": (lambda v: v > 0, "must be above 0")}


def check_ranges(args, positive: tuple[str, ...] = (), unit: tuple[str, ...] = (),
                 non_negative: tuple[str, ...] = (), above_zero: tuple[str, ...] = (),
                 flags: dict[str, str] | None = None) -> None:
    """Refuse ``positive`` numbers below 1, ``unit`` thresholds outside [0, 1], ``non_negative`` numbers below 0 and
    ``above_zero`` numbers not above 0. Names are attributes of ``args`` (None: not given, not checked), shown as
    ``flags[name]`` or else ``--name-with-dashes``; a list value, from a flag that takes several numbers, is checked
    number by number."""
    flags = flags or {}
    for kind, names in (("positive", positive), ("unit", unit), ("non_negative", non_negative),
                        ("above_zero", above_zero)):
        ok, rule = RULES[kind]
        for name in names:
            value = getattr(args, name)
            for v in value if isinstance(value, (list, tuple)) else [value]:
                if v is not None and not ok(v):
                    flag = flags.get(name, f"--{name.replace('_', '-')}")
                    raise ConfigError(f"{flag} {v} {rule}.")
