"""Errors the command line turns into one-line messages and exit status 2."""


class UsageError(Exception):
    """A wrong option value; printed as one line, exit status 2."""
