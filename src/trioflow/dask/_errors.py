"""The error of a task the cluster lost: its worker died, or the cluster dropped it."""

from __future__ import annotations

from trioflow import TrioflowError

__all__ = ("WorkerLostError",)


class WorkerLostError(TrioflowError, ConnectionError):
    """A task on the cluster ended without a result of its own: its worker died under it.

    Raised for a task whose worker process died or was killed while it ran (Dask's
    ``KilledWorker``, kept as ``__cause__``), whose isolated child process died without a
    result, or that the cluster dropped (the scheduler restarted or another client cancelled
    it). It derives from the builtin ``ConnectionError``, so a default
    :class:`~trioflow.RetryPolicy` retries it, and each retry counts in the outcome's
    ``attempts``.
    """
