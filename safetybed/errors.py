"""Errors that reach the user.

:class:`InputError` (and its subclass :class:`SpecError`) mean *bad input*: the command line maps
them to exit code 2 and prints ``str(error)`` as a single message, without a traceback. Anything
else escaping a command is an internal failure (exit code 1).
"""

from __future__ import annotations

from pathlib import Path


class InputError(Exception):
    """A file, flag or value given by the user is unusable. Exit code 2."""


class SpecError(InputError):
    """A spec file is invalid.

    Args:
        file: the spec file (or ``"<string>"``).
        field: dotted path of the offending field (``"highway.lanes"``), or ``""`` for the file itself.
        reason: what was expected and what was given.
    """

    def __init__(self, file: str | Path, field: str, reason: str):
        self.file = str(file)
        self.field = field
        self.reason = reason
        where = f"{self.file}: {field}" if field else self.file
        super().__init__(f"{where}: {reason}")


class IncompleteRunError(Exception):
    """A run ended without every planned episode stored exactly once. Exit code 1, one message.

    Args:
        run_id: the run, left with status ``partial``.
        problem: what is missing, duplicated or failed (``Completeness.describe()``).
    """

    def __init__(self, run_id: str, problem: str):
        self.run_id = run_id
        self.problem = problem
        super().__init__(f"run {run_id} is not complete: {problem}. Its status is 'partial'; run the missing "
                         f"episodes with the same command plus --resume {run_id} (safetybed runs show {run_id} "
                         "lists them)")
