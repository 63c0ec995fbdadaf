"""Operations that run synchronous code in a worker process or thread."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, TypeVarTuple

__all__ = ("in_process", "in_thread")

R = TypeVar("R")
Ts = TypeVarTuple("Ts")


def _not_a_callable(fn: object) -> TypeError:
    return TypeError(f"fn must be a callable, got {fn!r} ({type(fn).__qualname__})")


def in_process(fn: Callable[[*Ts], R], *args: *Ts) -> Callable[[], Awaitable[R]]:
    """Wrap a synchronous call as an operation that runs in a worker process.

    Use it for CPU-bound work, so a batch uses every core. The call runs through
    :func:`anyio.to_process.run_sync` (a pool of worker processes, one per CPU by default); when
    the operation is cancelled (a timeout, a ``fail_fast`` stop, the caller's cancel scope) its
    worker process is killed. ``fn`` and ``args`` must be picklable: ``fn`` a module-level
    function.

    Example::

        result = await run_batch([in_process(checksum, path) for path in paths], limit=4)

    Args:
        fn: A synchronous, picklable function.
        *args: Its positional arguments (picklable).

    Returns:
        A zero-argument async callable returning ``fn(*args)``.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise _not_a_callable(fn)

    async def run_in_process() -> R:
        import anyio.to_process  # on first use: it imports the subprocess machinery

        return await anyio.to_process.run_sync(fn, *args, cancellable=True)

    run_in_process.__qualname__ = f"in_process({getattr(fn, '__qualname__', fn)!s})"
    return run_in_process


def in_thread(fn: Callable[[*Ts], R], *args: *Ts) -> Callable[[], Awaitable[R]]:
    """Wrap a synchronous, blocking call as an operation that runs in a worker thread.

    Use it for blocking I/O or libraries without async support. The call runs through
    :func:`anyio.to_thread.run_sync`. A thread cannot be interrupted, so a cancellation (a
    timeout, a ``fail_fast`` stop, the caller's cancel scope) takes effect when the call
    returns: no thread outlives the batch. Give ``fn`` its own timeout if it can hang.

    Example::

        result = await run_batch([in_thread(read_file, path) for path in paths], limit=8)

    Args:
        fn: A synchronous function.
        *args: Its positional arguments.

    Returns:
        A zero-argument async callable returning ``fn(*args)``.

    Raises:
        TypeError: ``fn`` is not callable.
    """
    if not callable(fn):
        raise _not_a_callable(fn)

    async def run_in_thread() -> R:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(fn, *args)

    run_in_thread.__qualname__ = f"in_thread({getattr(fn, '__qualname__', fn)!s})"
    return run_in_thread
