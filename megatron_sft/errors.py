"""Errors meant for the user: one line that names the flag, file, line or tensor and the fix."""

from __future__ import annotations


class UserError(Exception):
    """A mistake in flags, files or data. Entry points print it as one line and exit 2."""


class ConfigErrors(UserError):
    """Several flag problems found together; each is reported on its own line."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
