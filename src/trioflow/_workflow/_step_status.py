"""How a step of a workflow run ended: :class:`StepStatus`."""

from __future__ import annotations

from .._status import Status

__all__ = ("StepStatus",)


class StepStatus(Status):
    """How a step of a workflow run ended.

    Attributes:
        SUCCEEDED: The step returned a value.
        FAILED: The step raised (after its retries), timed out, or returned a value the store
            could not save.
        SKIPPED: Its ``when`` condition returned False; counts as done for later steps.
        CANCELLED: It was running when the run was cancelled (a fail-fast failure elsewhere, or
            the caller's cancellation).
        NOT_RUN: It never started (no attempt): a step it comes after failed, or the run
            stopped first (while it waited for its slot or its condition, too).
        COMPENSATED: It succeeded, then its ``compensate`` ran successfully after the run
            failed.
    """

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    NOT_RUN = "not_run"
    COMPENSATED = "compensated"
