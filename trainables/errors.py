"""The one error type for mistakes a user can fix (a typo, a missing file, unreachable weights).

It lives on the worker side because workers raise it too; the CLIs print it as one line."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit status 2, no traceback."""
