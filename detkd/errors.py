"""User-facing errors. Each one names the problem and the fix; the CLI prints the message without a traceback."""

from __future__ import annotations


class DetKDError(Exception):
    """Base class of errors a user can cause (bad input, missing file, incompatible models)."""


class WeightsNotFoundError(DetKDError, FileNotFoundError):
    """A named weight file does not exist locally (detkd never downloads)."""


class IncompatibleModelsError(DetKDError, ValueError):
    """Teacher, student and data disagree (classes, names, strides, reg_max, feature levels)."""


class DatasetError(DetKDError, ValueError):
    """A dataset description or its files are unusable."""


class ConfigError(DetKDError, ValueError):
    """A distillation setting is out of range or unknown."""
