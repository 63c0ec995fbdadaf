"""Listeners: one way for every component to tell what happened, ``remove = x.add_listener(fn)``.

A component (a resource manager, a circuit breaker, a health monitor, an object pool, a
coordinator) keeps a :class:`Listeners` and calls :meth:`Listeners.emit` with a frozen event
value whose ``kind`` names what happened. Listeners are called synchronously, in registration
order, in the task that caused the event. One that raises an ``Exception`` is logged (a
structlog ``listener failed`` error naming the component and the event's kind, once per raise)
and neither the component nor the other listeners notice; cancellation and other
``BaseException`` s propagate, as everywhere in trioflow.

A component with no listener pays one truth test of its :class:`Listeners` (``if
listeners:``) and builds no event.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar, final

from ._checks import describe
from ._deprecate import warn_renamed

__all__ = ("Event", "Listeners")


class Event(Protocol):
    """What every event has: a ``kind`` naming what happened."""

    @property
    def kind(self) -> str:
        """What happened, e.g. ``"released"`` or ``"state_changed"``."""
        ...


E = TypeVar("E", bound=Event)


def _log_failure(logger: Any, component: str, kind: str, fn: object, exc: Exception) -> None:
    if logger is None:
        import structlog  # here, not at module level: it is slow to import

        logger = structlog.get_logger("trioflow")
    logger.error(
        "listener failed",
        component=component,
        kind=kind,
        listener=getattr(fn, "__qualname__", repr(fn)),
        error=f"{type(exc).__name__}: {exc}",
        exc_info=exc,
    )


def _positional_arity(fn: Callable[..., object]) -> int | None:
    """How many positional arguments ``fn`` requires, or None when it cannot be told."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    required = 0
    for parameter in signature.parameters.values():
        if parameter.kind is parameter.VAR_POSITIONAL:
            return None
        positional = parameter.kind in (parameter.POSITIONAL_ONLY, parameter.POSITIONAL_OR_KEYWORD)
        if positional and parameter.default is parameter.empty:
            required += 1
    return required


@final
class Listeners(list[list[Callable[[E], object]]], Generic[E]):
    """The listeners of one component, and how events reach them.

    A list (of one-item lists, one per registration, so that the same function added twice is
    two listeners and each ``remove()`` takes away its own), so that a hot path's ``if
    listeners:`` is the interpreter's own truth test of a list, not a Python ``__bool__``
    call. Components only :meth:`add` and :meth:`emit`.

    Args:
        component: What the log calls the component (``"ResourceManager"``, ...).
        logger: The structlog logger a failing listener is logged with; by default
            ``structlog.get_logger("trioflow")``, made on the first failure.
    """

    __slots__ = ("_component", "_logger")

    def __init__(self, component: str, logger: Any = None) -> None:
        super().__init__()
        self._component = component
        self._logger = logger

    def __repr__(self) -> str:
        return f"<Listeners of {self._component}: {len(self)}>"

    def add(
        self,
        fn: Callable[[E], object],
        *,
        legacy: tuple[int, str, Callable[[Callable[..., object]], Callable[[E], object]]]
        | None = None,
    ) -> Callable[[], None]:
        """Register ``fn(event)``; return the function that removes it (idempotent).

        Args:
            fn: A synchronous callable taking one event.
            legacy: For a component whose listeners took other arguments before: ``(arity,
                old shape, adapt)``. A ``fn`` that requires exactly ``arity`` positional
                arguments is wrapped by ``adapt(fn)`` with a :class:`DeprecationWarning`
                naming the old shape.

        Returns:
            A function of no arguments that removes the listener; calling it again does
            nothing.

        Raises:
            TypeError: ``fn`` is not callable.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {describe(fn)}")
        if legacy is not None:
            arity, old, adapt = legacy
            if _positional_arity(fn) == arity:
                warn_renamed(
                    f"a {self._component} listener taking {old}",
                    "a listener taking one event (fn(event))",
                    stacklevel=4,
                )
                fn = adapt(fn)
        entry = [fn]
        entries = self
        entries.append(entry)

        def remove() -> None:
            for index, candidate in enumerate(entries):
                if candidate is entry:
                    del entries[index]
                    return

        return remove

    def emit(self, event: E) -> None:
        """Call every listener with ``event``; log (and otherwise ignore) one that raises.

        Args:
            event: The event, a frozen value with a ``kind``.
        """
        for (fn,) in tuple(self):
            try:
                fn(event)
            except Exception as exc:
                _log_failure(self._logger, self._component, event.kind, fn, exc)
