"""Run the `btcxr` CLI with kill -9 injected into one file write, for the kill matrix tests.

    python tests/kill_launcher.py NAME:N:WHEN btcxr-arguments...

SIGKILLs this process during the N-th write of a file called NAME (1-based) through btcxr.engine.io:
WHEN=start right after the temporary file was opened and a few bytes written, WHEN=end once the whole
temporary file is on disk but before it is renamed. Nothing in the package knows about this: the launcher
wraps `os.replace` and `atomic_output` from outside, so the process dies exactly as under the OOM killer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path


def main() -> int:
    name, nth, when = sys.argv[1].split(":")
    count = {"n": 0}

    import btcxr.engine.checkpoint as checkpoint
    import btcxr.engine.io as io

    real_output = io.atomic_output

    @contextlib.contextmanager
    def dying_output(path, mode="wb", encoding=None, durable=True):
        with real_output(path, mode, encoding, durable) as handle:
            if Path(path).name == name:
                count["n"] += 1
                if count["n"] == int(nth) and when == "start":
                    handle.write(b"PK\x03\x04partial" if "b" in mode else "partial")
                    handle.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                if count["n"] == int(nth) and when == "end":
                    real_replace = os.replace

                    def replace_then_die(src, dst):
                        if Path(dst).name == name:
                            os.kill(os.getpid(), signal.SIGKILL)
                        real_replace(src, dst)

                    io.os.replace = replace_then_die  # type: ignore[attr-defined]
            yield handle

    io.atomic_output = dying_output
    checkpoint.atomic_output = dying_output
    from btcxr.cli import main as cli

    return cli(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
