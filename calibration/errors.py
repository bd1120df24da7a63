"""Exceptions for bad user input.

Every error a user can cause (a wrong name, a bad option, a malformed input file) is a
:class:`ComemInputError`; the CLI prints its message as one line and exits with code 2.
Anything else escaping is a bug.
"""

from __future__ import annotations


class ComemInputError(ValueError):
    """Base class of every bad-user-input error in comem-sim (CLI: one line, exit code 2)."""


class UnknownNameError(ComemInputError):
    """An unknown model, GPU or dtype name; the message lists the known names."""


class KernelDataError(ComemInputError):
    """A kernel-measurement file or directory is missing or malformed."""
