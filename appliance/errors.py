"""User-facing errors: one line, names the file/record/flag and how to fix it."""

from __future__ import annotations


class ApplianceError(Exception):
    """An error caused by the user's input or environment.

    The CLI prints ``error: <message>`` on one line and exits with code 2,
    without a traceback. Messages should name the file, record or flag at fault
    and say how to fix it.
    """

    exit_code = 2


class CheckFailed(ApplianceError):
    """The input was fine but a check of the result failed (merge verification, the merge check):
    exit code 1, as a failed eval gate, rather than 2 for bad input."""

    exit_code = 1
