"""Triggers: async iterables of events, on the event loop's clock, by cron, or from files.

A trigger is any async iterable; the ones here make their schedule when iteration starts (each
``async for`` has its own), and never drift: ``every`` computes its k-th tick as
``start + k * seconds``, and ``cron`` the next matching wall-clock time from the previous one.
A tick whose time passed while the consumer was busy is delivered at once, not skipped (what
to do with a late event is the consumer's choice: :func:`~trioflow.run_on`'s ``overlap``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterable, AsyncIterator, Callable
from datetime import datetime, tzinfo
from typing import TYPE_CHECKING, Any, final

import anyio
import anyio.lowlevel

from .._backend import current_time
from .._checks import check_number, describe

if TYPE_CHECKING:
    from watchfiles import Change

__all__ = ("cron", "every", "file_changes")

# cron re-reads the wall clock at least this often while it waits, so a wall clock that jumps
# (a suspended machine, a corrected clock) delays a fire time by at most this much.
_WALL_CLOCK_LOOK = 60.0


@final
class _Every:
    __slots__ = ("_seconds",)

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds

    def __repr__(self) -> str:
        return f"every({self._seconds:g})"

    def __aiter__(self) -> AsyncIterator[float]:
        return _EveryIterator(self._seconds)


@final
class _EveryIterator:
    __slots__ = ("_seconds", "_start", "_ticks")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._start: float | None = None
        self._ticks = 0

    def __aiter__(self) -> AsyncIterator[float]:
        return self

    async def __anext__(self) -> float:
        if self._start is None:
            self._start = current_time()
        self._ticks += 1
        due = self._start + self._ticks * self._seconds
        await anyio.sleep_until(due)
        return due


def every(seconds: float) -> AsyncIterable[float]:
    """Tick every ``seconds`` on the event loop's clock, measured from the start, never drifting.

    ::

        async for due in trioflow.every(10):   # at 10, 20, 30, ... s from the first look
            await refresh()

    The k-th tick is due at ``start + k * seconds``, where ``start`` is the loop time at which
    iteration begins; each tick yields the loop time (``anyio.current_time()``) it was due, so
    ``anyio.current_time() - due`` is how late it is delivered. A tick whose time passed while
    the consumer was busy is delivered at once. Each ``async for`` has its own schedule.

    Args:
        seconds: The period, a finite number > 0.

    Returns:
        An async iterable of due times (floats, on the loop's clock); it never ends.

    Raises:
        TypeError: ``seconds`` is not a number.
        ValueError: ``seconds`` is not a finite number > 0.
    """
    return _Every(check_number(seconds, "seconds", minimum=0, strict=True))


def _zone(value: object) -> tzinfo:
    if isinstance(value, tzinfo):
        return value
    if not isinstance(value, str):
        raise TypeError(f"timezone must be a time zone name or a tzinfo, got {describe(value)}")
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"timezone must be a known time zone name (such as 'Europe/Paris'), "
            f"got {describe(value)}"
        ) from None


def _cronsim() -> Any:
    try:
        import cronsim
    except ImportError as exc:
        raise ImportError(
            "trioflow.cron needs the cronsim package: pip install 'trioflow[cron]'"
        ) from exc
    return cronsim


@final
class _Cron:
    __slots__ = ("_expression", "_now", "_zone")

    def __init__(self, expression: str, zone: tzinfo, now: Callable[[], datetime]) -> None:
        self._expression = expression
        self._zone = zone
        self._now = now

    def __repr__(self) -> str:
        return f"cron({self._expression!r}, timezone={self._zone!s})"

    def __aiter__(self) -> AsyncIterator[datetime]:
        return _CronIterator(self._expression, self._zone, self._now)


@final
class _CronIterator:
    __slots__ = ("_expression", "_now", "_times", "_zone")

    def __init__(self, expression: str, zone: tzinfo, now: Callable[[], datetime]) -> None:
        self._expression = expression
        self._zone = zone
        self._now = now
        self._times: Any = None

    def __aiter__(self) -> AsyncIterator[datetime]:
        return self

    def _wall_now(self) -> datetime:
        now = self._now()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise TypeError(f"now() must return an aware datetime, got {describe(now)}")
        return now.astimezone(self._zone)

    async def __anext__(self) -> datetime:
        if self._times is None:
            self._times = _cronsim().CronSim(self._expression, self._wall_now())
        due: datetime = next(self._times)
        while True:
            # Timestamps, not datetime subtraction: two datetimes of one zone subtract as
            # wall-clock times, an hour off across a daylight-saving change.
            left = due.timestamp() - self._wall_now().timestamp()
            if left <= 0:
                break
            await anyio.sleep(min(left, _WALL_CLOCK_LOOK))
        await anyio.lowlevel.checkpoint()
        return due


def cron(
    expression: str,
    *,
    timezone: str | tzinfo = "UTC",
    now: Callable[[], datetime] | None = None,
) -> AsyncIterable[datetime]:
    """Fire at the wall-clock times a standard five-field cron expression matches.

    ::

        async for when in trioflow.cron("0 3 * * mon-fri", timezone="Europe/Paris"):
            await nightly_report(when)

    The next matching time is computed with ``cronsim`` in ``timezone``, then waited for on
    the event loop, re-reading the wall clock at least once a minute. Daylight-saving changes
    follow cron's rules: a time the spring change skips fires when the clock jumps over it,
    and a daily time the autumn change repeats fires once. Each event is the (aware) datetime
    it was due, in ``timezone``. A time that passed while the consumer was busy is delivered
    at once, not skipped. The ``cron`` extra brings cronsim: ``pip install 'trioflow[cron]'``.

    Args:
        expression: Five fields: minute, hour, day of month, month, day of week (names such
            as ``mon`` and ``jan``, ranges, lists and steps as in cron).
        timezone: The zone the fields are read in: a name from the tz database
            (``"America/New_York"``) or a ``tzinfo``. UTC by default.
        now: The wall clock, returning an aware datetime; ``datetime.now(timezone)`` by
            default. Tests in virtual time pass one that follows the loop's clock, e.g.
            ``lambda: start + timedelta(seconds=anyio.current_time())``.

    Returns:
        An async iterable of due datetimes; it never ends.

    Raises:
        ImportError: cronsim is not installed.
        TypeError: ``expression`` is not a str, ``timezone`` neither a str nor a tzinfo, or
            ``now`` not callable.
        ValueError: ``expression`` is not a valid five-field expression, or ``timezone`` is
            not a known zone.
    """
    if not isinstance(expression, str):
        raise TypeError(f"expression must be a str, got {describe(expression)}")
    zone = _zone(timezone)
    if now is not None and not callable(now):
        raise TypeError(f"now must be a callable returning a datetime, got {describe(now)}")
    expected = "a five-field cron expression (minute hour day month weekday)"
    if len(expression.split()) != 5:
        raise ValueError(f"expression must be {expected}, got {describe(expression)}")
    cronsim = _cronsim()
    try:
        cronsim.CronSim(expression, datetime.now(zone))
    except cronsim.CronSimError as exc:
        raise ValueError(
            f"expression must be {expected}, got {describe(expression)}: {exc}"
        ) from None
    return _Cron(expression, zone, now if now is not None else lambda: datetime.now(zone))


@final
class _FileChanges:
    __slots__ = ("_debounce", "_paths", "_recursive")

    def __init__(self, paths: tuple[str, ...], debounce: float, recursive: bool) -> None:
        self._paths = paths
        self._debounce = debounce
        self._recursive = recursive

    def __repr__(self) -> str:
        return f"file_changes({', '.join(map(repr, self._paths))})"

    def __aiter__(self) -> AsyncIterator[set[tuple[Change, str]]]:
        from watchfiles import awatch

        return awatch(
            *self._paths,
            debounce=max(1, round(self._debounce * 1000)),
            recursive=self._recursive,
        )


def file_changes(
    *paths: str | os.PathLike[str], debounce: float = 0.3, recursive: bool = True
) -> AsyncIterable[set[tuple[Change, str]]]:
    """Watch files and directories; each event is one debounced batch of changes.

    ::

        async for changes in trioflow.file_changes("config/"):
            for change, path in changes:
                print(change.name, path)       # added, modified or deleted

    Built on ``watchfiles.awatch`` (OS notifications, a thread per watch): changes that
    happen within ``debounce`` seconds of one another come as one set of ``(Change, path)``
    pairs. The ``cli`` extra brings watchfiles: ``pip install 'trioflow[cli]'``; it is
    imported when iteration starts. Ending the iteration (or cancelling it) stops the watch.

    Args:
        *paths: Files or directories to watch; at least one; they must exist when watching
            starts.
        debounce: Seconds to gather changes into one event, a finite number > 0.
        recursive: Whether directories are watched with everything below them.

    Returns:
        An async iterable of sets of ``(watchfiles.Change, path)``; it never ends.

    Raises:
        TypeError: A path is not a str or path, or ``debounce`` not a number.
        ValueError: No path was given, or ``debounce`` is not > 0.
    """
    if not paths:
        raise ValueError("file_changes needs at least one path")
    names: list[str] = []
    for index, path in enumerate(paths):
        if not isinstance(path, str | os.PathLike):
            raise TypeError(f"paths[{index}] must be a str or a path, got {describe(path)}")
        names.append(os.fspath(path))
    seconds = check_number(debounce, "debounce", minimum=0, strict=True)
    if not isinstance(recursive, bool):
        raise TypeError(f"recursive must be a bool, got {describe(recursive)}")
    return _FileChanges(tuple(names), seconds, recursive)
