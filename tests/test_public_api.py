from __future__ import annotations

import collections
import importlib
import inspect
import types
import warnings

import pytest

import trioflow
import trioflow.lifecycle
import trioflow.mcp
import trioflow.redis

NAMESPACES = {
    "trioflow": trioflow,
    "trioflow.lifecycle": trioflow.lifecycle,
    "trioflow.mcp": trioflow.mcp,
    "trioflow.dask": importlib.import_module("trioflow.dask"),
    "trioflow.redis": trioflow.redis,
    "trioflow.telemetry": importlib.import_module("trioflow.telemetry"),
}


def _names() -> list[tuple[str, str]]:
    return [(ns, name) for ns, module in NAMESPACES.items() for name in module.__all__]


def test_all_is_a_tuple_of_unique_names() -> None:
    for module in NAMESPACES.values():
        assert isinstance(module.__all__, tuple)
    counts = collections.Counter(name for _, name in _names())
    assert [name for name, n in counts.items() if n > 1] == []  # each name exported once


def test_every_public_name_exists_and_is_documented() -> None:
    undocumented = []
    for ns, name in _names():
        obj = getattr(NAMESPACES[ns], name)
        doc = inspect.getdoc(obj)
        if not doc or not doc.strip():
            undocumented.append(f"{ns}.{name}")
    assert undocumented == []


def test_public_objects_report_the_public_module() -> None:
    wrong = []
    for ns, name in _names():
        obj = getattr(NAMESPACES[ns], name)
        if isinstance(obj, types.ModuleType):
            continue
        module = getattr(obj, "__module__", ns)
        if isinstance(module, str) and module.startswith("trioflow") and module != ns:
            wrong.append(f"{ns}.{name} reports {module}")
    assert wrong == []


def test_no_private_module_is_exported() -> None:
    assert not [name for _, name in _names() if name.startswith("_")]


def test_no_public_name_shadows_a_builtin() -> None:
    import builtins

    assert [name for _, name in _names() if hasattr(builtins, name)] == []


def test_exceptions_end_in_error_and_nothing_else_does() -> None:
    wrong = []
    for ns, name in _names():
        obj = getattr(NAMESPACES[ns], name)
        is_exception = isinstance(obj, type) and issubclass(obj, BaseException)
        if is_exception != name.endswith("Error"):
            wrong.append(f"{ns}.{name}")
    assert wrong == []


# trioflow.PoolStatistics has named a ResourceManager pool's snapshot since 0.1.
NAMED_OTHERWISE = {"Pool": "ObjectPoolStatistics"}


def test_statistics_snapshots_are_named_for_their_class() -> None:
    # Every class with a statistics() method returns a snapshot named <Class>Statistics.
    wrong = []
    for ns, name in _names():
        obj = getattr(NAMESPACES[ns], name)
        statistics = getattr(obj, "statistics", None)
        if isinstance(obj, type) and callable(statistics):
            returns = inspect.signature(statistics).return_annotation
            returns = str(returns).split("[")[0]
            if returns != NAMED_OTHERWISE.get(name, f"{name}Statistics"):
                wrong.append(f"{name}.statistics() -> {returns}")
    assert wrong == []


def test_status_enums_share_one_base_and_one_word_for_success() -> None:
    from trioflow._status import Status

    statuses = [
        trioflow.OutcomeStatus,
        trioflow.StepStatus,
        trioflow.RunStatus,
        trioflow.lifecycle.ProcessingStatus,
    ]
    for status in statuses:
        assert issubclass(status, Status)
        assert status.SUCCEEDED.value == "succeeded"


def test_getattr_of_an_unknown_name_is_an_attribute_error() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(AttributeError, match="has no attribute 'nope'"):
            trioflow.nope  # noqa: B018


def test_the_api_reference_documents_every_public_name() -> None:
    import pathlib

    reference = (pathlib.Path(__file__).parent.parent / "docs" / "reference.md").read_text()
    documented = {line.split()[1] for line in reference.splitlines() if line.startswith("::: ")}
    public = {f"{ns}.{name}" for ns, name in _names() if name != "lifecycle"}
    assert sorted(public - documented) == []
    assert sorted(documented - public - {"trioflow.testing"}) == []
