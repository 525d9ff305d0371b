"""One logging set-up for the whole toolkit, driven by the CLI's --verbose/--quiet switch."""

from __future__ import annotations

import logging
import sys


def setup_logging(verbosity: int = 0) -> None:
    """verbosity: -1 quiet (warnings only), 0 info, 1 debug."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger("btcxr")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def progress_disabled() -> bool:
    """Progress bars follow the log level: quiet runs show none."""
    return logging.getLogger("btcxr").getEffectiveLevel() > logging.INFO
