"""Names of trioflow 0.1 keep working, each with one DeprecationWarning naming its replacement."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import trioflow
import trioflow.lifecycle

RENAMED = {
    "AdaptiveStatistics": "AdaptiveConcurrencyStatistics",
    "HealthStatistics": "HealthMonitorStatistics",
    "InvalidTransition": "InvalidTransitionError",
    "OperationError": "OperationFailure",
    "ResourceExhausted": "ResourceExhaustedError",
    "ResourceStatistics": "ResourceManagerStatistics",
    "TransitionInProgress": "TransitionInProgressError",
    "UnknownKind": "UnknownKindError",
    "UnknownTool": "UnknownToolError",
    "UnstorableValue": "UnstorableValueError",
    "WorkflowShapeChanged": "WorkflowShapeChangedError",
    "map": "amap",
}


@pytest.mark.parametrize(("old", "new"), sorted(RENAMED.items()))
def test_a_renamed_name_is_the_new_object_with_a_warning(old: str, new: str) -> None:
    with pytest.warns(
        DeprecationWarning,
        match=rf"^trioflow\.{old} is deprecated .* use trioflow\.{new} instead$",
    ):
        obj = getattr(trioflow, old)
    assert obj is getattr(trioflow, new)


@pytest.mark.parametrize("name", trioflow._MOVED)
def test_a_moved_lifecycle_name_is_the_new_object_with_a_warning(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"use trioflow\.lifecycle\.{name} instead$"):
        obj = getattr(trioflow, name)
    assert obj is getattr(trioflow.lifecycle, name)


def test_from_import_of_an_old_name_warns_and_works() -> None:
    with pytest.warns(DeprecationWarning, match="trioflow.ResourceExhausted is deprecated"):
        from trioflow import ResourceExhausted
    assert ResourceExhausted is trioflow.ResourceExhaustedError
    # Code that catches the old name catches what trioflow raises now.
    with pytest.raises(ResourceExhausted):
        raise trioflow.ResourceExhaustedError("full")


def test_old_names_are_not_part_of_the_public_face() -> None:
    public = set(trioflow.__all__) | set(trioflow.lifecycle.__all__)
    assert not public & set(RENAMED)
    assert not set(trioflow.__all__) & set(trioflow.lifecycle.__all__)


def test_a_renamed_status_member_warns_and_is_the_new_member() -> None:
    status = trioflow.lifecycle.ProcessingStatus
    with pytest.warns(DeprecationWarning, match=r"ProcessingStatus\.COMPLETED is deprecated"):
        assert status.COMPLETED is status.SUCCEEDED
    with pytest.warns(DeprecationWarning, match=r"ProcessingStatus\('completed'\) is deprecated"):
        assert status("completed") is status.SUCCEEDED
    with pytest.raises(ValueError, match="'done' is not a valid ProcessingStatus"):
        status("done")
    with pytest.raises(AttributeError):
        status.DONE  # noqa: B018


def test_the_warning_points_at_the_caller() -> None:
    # Run in a fresh interpreter with the default filters: the warning names the user's line.
    code = textwrap.dedent(
        """
        import warnings
        warnings.simplefilter("always")
        import trioflow
        trioflow.map
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stderr
    assert "<string>:5: DeprecationWarning: trioflow.map is deprecated" in out


# Names new in trioflow.lifecycle since 0.1, which never were at the top level.
# Names of trioflow.lifecycle that were never in trioflow (new in 0.2).
_NEW_IN_LIFECYCLE = (
    "RequestStream",
    "RequestRecord",
    "RequestStore",
    "MemoryRequestStore",
    "SQLiteRequestStore",
    "CoordinatorEvent",
    "RequestFinished",
    "AdmissionRefused",
    "Alert",
    "AlertCleared",
    "AlertsConfig",
    "QueueDepthAlertConfig",
    "FailureRatioAlertConfig",
    "HealthAlertConfig",
    "SharedConfig",
)


def test_the_moved_names_are_those_of_trioflow_lifecycle() -> None:
    moved = tuple(n for n in trioflow.lifecycle.__all__ if n not in _NEW_IN_LIFECYCLE)
    assert moved == trioflow._MOVED


def test_import_trioflow_does_not_import_the_request_layer() -> None:
    code = "import sys, trioflow; print('trioflow.lifecycle' in sys.modules, trioflow.lifecycle)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.startswith("False <module 'trioflow.lifecycle'")
