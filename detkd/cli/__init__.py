"""``detkd`` command line: one module per sub-command under :mod:`detkd.cli`.

Each sub-command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
Errors a user can cause (:class:`detkd.errors.DetKDError`) are printed as one clear message, exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Sub-commands in the order `detkd --help` lists them. A module that is not there yet is skipped.
COMMANDS = ("demo", "distill", "eval", "bench", "export", "compare")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default only when it has one: ``None`` / ``False`` / ``[]`` (a repeatable option given no
    time) mean 'not set' (for KD options: the recipe's value, which the help text gives in brackets), and
    "(default: None)" beside "[1.0]" misleads. A default of 0 is a value and is shown."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == []:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="detkd",
        description="Knowledge distillation for YOLO detectors: distill, evaluate (COCO), benchmark, export, compare.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"detkd.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"detkd.cli.{name}":
                continue
            raise
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=DefaultsHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _resume_hint(last, args) -> str:
    """How to continue an interrupted training run, from its own ``last.pt`` (see ``detkd.api.TrainingInterrupted``)."""
    if last is None:
        return ""
    if getattr(args, "assistant", None):  # a teacher-assistant chain resumes by running it again
        return " Run the same command again: a finished stage is reused, the interrupted one resumes from its last.pt."
    if not last.is_file():
        return f" No checkpoint was written yet ({last} comes at the end of epoch 1): start the run again."
    return f" Resume with: detkd distill --resume {last}"


def check_devices(args: argparse.Namespace) -> None:
    """Every device a sub-command was given (``--device``, ``--eval-device``, ``--bench-device``, ...) exists on this
    machine: one :class:`~detkd.errors.ConfigError` before any work, for every sub-command alike."""
    from detkd.config import check_device

    for name, value in vars(args).items():
        if name == "device" or name.endswith("_device"):
            check_device(value, what=f"--{name.replace('_', '-')}")


def main(argv: list[str] | None = None) -> int:
    from detkd.errors import DetKDError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 1
    try:
        check_devices(args)
        return int(args._run(args) or 0)
    except DetKDError as e:
        print(f"\ndetkd {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"\ndetkd {args.command}: interrupted.{_resume_hint(getattr(e, 'last', None), args)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
