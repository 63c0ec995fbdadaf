"""When this process is the ``trioflow`` command, Ctrl-C while it starts exits 130 quietly.

Python turns SIGINT into ``KeyboardInterrupt`` wherever the interpreter happens to be, and one
that arrives while the command is still importing its modules ends in a traceback that says
nothing to the user. This module is imported first by the package: only when the process *is*
the command (``python -m trioflow`` or the ``trioflow`` script) does it install a SIGINT handler
that exits with status 130 at once, like an interrupted shell command. The command restores
Python's own handler (:func:`finished`) as soon as it can handle ``KeyboardInterrupt`` itself.
An application that imports trioflow is never affected.
"""

from __future__ import annotations

import os
import sys
from types import FrameType

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

if TYPE_CHECKING:
    import signal as _signal
else:  # the interpreter's own module, loaded already: signal.py would take milliseconds
    import _signal

__all__ = ("finished",)


def _is_the_command() -> bool:
    if sys.argv[:1] == ["-m"]:  # `python [options] -m trioflow ...`, while runpy imports it
        argv = sys.orig_argv
        return "-m" in argv and argv[argv.index("-m") + 1 :][:1] == ["trioflow"]
    main = sys.modules.get("__main__")
    script = getattr(main, "__file__", None)
    return isinstance(script, str) and os.path.basename(script) in ("trioflow", "trioflow.exe")


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # os._exit, not SystemExit: raised from whatever the interpreter is running (a class
    # being created, say), an exception can come out wrapped in another. Nothing is written
    # or held yet while the command starts, so there is nothing to clean up.
    os.write(2, b"trioflow: interrupted\n")
    os._exit(130)


_installed = False
if _is_the_command() and _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler:
    _signal.signal(_signal.SIGINT, _interrupted)
    _installed = True


def finished() -> None:
    """Give SIGINT back to Python (``KeyboardInterrupt``): the command handles it from here."""
    global _installed
    if _installed and _signal.getsignal(_signal.SIGINT) is _interrupted:
        _signal.signal(_signal.SIGINT, _signal.default_int_handler)
    _installed = False
