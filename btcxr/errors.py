"""Errors meant for users: the CLI prints their message, not a traceback."""


class BtcxrError(Exception):
    """A problem with the user's input (file, row, field, option), explained in the message."""
