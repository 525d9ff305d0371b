"""Errors meant for users: the CLI prints their message, not a traceback."""


class BtcxrError(Exception):
    """A problem with the user's input (file, row, field, option), explained in the message."""


def cut(text: str, limit: int = 200) -> str:
    """A value quoted in an error message, shortened: a huge or hostile value must not flood the terminal."""
    text = str(text)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def did_you_mean(value: str, choices) -> str:
    """" (did you mean X?)" for the closest of `choices` to a mistyped `value`, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# The words of every command's --on-error option: an unreadable input stops the run, or is skipped and listed.
ON_ERROR = ("stop", "skip")
# Older spellings still accepted (with a deprecation warning), and the word they stand for.
ON_ERROR_ALIASES = {"raise": "stop"}


def check_on_error(value: str, option: str = "--on-error") -> str:
    """`value` as one of ON_ERROR (a deprecated alias is mapped, with a warning); anything else is an error."""
    if value in ON_ERROR_ALIASES:
        import logging

        logging.getLogger("btcxr").warning("%s %s is deprecated; use %s %s", option, value, option,
                                           ON_ERROR_ALIASES[value])
        return ON_ERROR_ALIASES[value]
    if value not in ON_ERROR:
        raise BtcxrError(f"{option} {cut(value)}: expected {' or '.join(ON_ERROR)}{did_you_mean(value, ON_ERROR)}")
    return value
