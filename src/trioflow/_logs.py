"""Engine logs: the ``logger=`` of ``run_batch``, ``run_workflow`` and ``Pipeline.run``.

An engine given a logger writes one event when it starts and one when it ends (counts,
limit, duration). The logger is either a stdlib :class:`logging.Logger` (or
:class:`logging.LoggerAdapter`), which gets a ``"batch started total=100 limit=16"`` message
with the same fields in ``extra``, or anything with structlog's method names (a structlog
bound logger, filtering or stdlib-backed, or a lazy proxy from ``structlog.get_logger``),
which gets the event name and the fields as keywords.

Whether the logger's info level is on is asked once per run (``isEnabledFor`` or
structlog's ``is_enabled_for``): when it is off, or no logger is given, :func:`open_log`
returns None and the engine builds no event at all.
"""

from __future__ import annotations

import logging
from typing import Any, final

from ._checks import describe

__all__ = ("EngineLog", "check_logger", "open_log")

_STDLIB = (logging.Logger, logging.LoggerAdapter)


def check_logger(logger: object) -> object:
    """Check a ``logger=`` argument at the boundary, before anything runs.

    Args:
        logger: None, a stdlib logger or adapter, or an object with an ``info`` method.

    Returns:
        The logger.

    Raises:
        TypeError: Anything else.
    """
    if logger is None or isinstance(logger, _STDLIB):
        return logger
    if not callable(getattr(logger, "info", None)):
        raise TypeError(
            "logger must be a logging.Logger, a structlog logger (anything with an info "
            f"method) or None, got {describe(logger)}"
        )
    return logger


def _info_enabled(logger: Any) -> bool:
    # structlog's filtering bound loggers answer is_enabled_for, stdlib ones isEnabledFor;
    # a logger that answers neither logs everything it is given.
    ask = getattr(logger, "is_enabled_for", None) or getattr(logger, "isEnabledFor", None)
    return True if ask is None else bool(ask(logging.INFO))


def _text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, str):
        return value if value and " " not in value and "=" not in value else repr(value)
    if isinstance(value, list | tuple):
        return ",".join(_text(v) for v in value) or "[]"
    return str(value)


@final
class EngineLog:
    """A logger whose info level was found on: write events without asking again."""

    __slots__ = ("_logger", "_stdlib")

    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._stdlib = isinstance(logger, _STDLIB)

    def info(self, event: str, **fields: object) -> None:
        """Write one event at info level.

        Args:
            event: The event, e.g. ``"batch started"``.
            **fields: Its fields (counts, limit, duration...).
        """
        if self._stdlib:
            text = " ".join(f"{key}={_text(value)}" for key, value in fields.items())
            self._logger.info(f"{event} {text}" if text else event, extra=fields)
        else:
            self._logger.info(event, **fields)


def open_log(logger: object) -> EngineLog | None:
    """Return an :class:`EngineLog` for one run, or None when nothing would be written.

    Args:
        logger: A logger that :func:`check_logger` accepted, or None.

    Returns:
        None for no logger or a logger whose info level is off; else an ``EngineLog``.
    """
    if logger is None:
        return None
    if not isinstance(logger, _STDLIB):
        bind = getattr(logger, "bind", None)
        if callable(bind):
            # structlog's lazy proxy (``get_logger()``) binds itself again at every method
            # looked up on it: bind it once per run instead (the same context, and several
            # microseconds less for the level check and each event).
            logger = bind()
    if not _info_enabled(logger):
        return None
    return EngineLog(logger)
