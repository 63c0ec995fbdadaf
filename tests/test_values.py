"""Frozen values built on the engines' hot paths are the values their classes would make.

Each engine builds its outcomes, reports and records with ``trioflow._values.builder``, which
fills a mutable twin of the class and then makes the object an instance of the class itself.
These tests check, for every class built so and for any fields, that the object is exactly the
one the class's own constructor makes: its type, equality, hash, repr, frozenness, pickling,
copies, weak references and ``attrs.evolve``; and that the fast way is the one taken.
"""

from __future__ import annotations

import copy
import pickle
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trioflow import Outcome, OutcomeStatus, Progress, StepRecord, StepStatus, WorkflowProgress
from trioflow._batch._outcomes import _build_progress, make_outcome, make_progress
from trioflow._lifecycle._machine import _change
from trioflow._lifecycle._request import _build_result
from trioflow._values import builder, lazy_field, refiller
from trioflow._workflow._result import progress_snapshot
from trioflow._workflow._store import StoredValue, step_record
from trioflow.lifecycle import (
    ErrorCategory,
    ProcessingResult,
    ProcessingStatus,
    RequestState,
    StateChange,
)

small = st.integers(-5, 10**6)
maybe_small = st.none() | small
times = st.floats(allow_nan=False, allow_infinity=False)
texts = st.text(max_size=8)
maybe_texts = st.none() | texts


def valued(cls: type[Any], *fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Fields in declaration order, and the value ``cls``'s own constructor makes of them."""
    names = [field.name for field in attrs.fields(cls)]
    return st.tuples(*fields).map(lambda f: (f, cls(**dict(zip(names, f, strict=True)))))


def outcomes() -> st.SearchStrategy[Any]:
    return valued(
        Outcome, small, st.sampled_from(OutcomeStatus), st.none() | small, st.none(), times, small
    )


def progresses() -> st.SearchStrategy[Any]:
    # make_progress takes no ``cancelled``: the engine's reports have none until the end.
    return st.tuples(maybe_small, small, small, small).map(
        lambda f: (f, Progress(total=f[0], completed=f[1], failed=f[2], running=f[3]))
    )


def changes() -> st.SearchStrategy[Any]:
    return valued(StateChange, texts, texts, times)


def records() -> st.SearchStrategy[Any]:
    stamps = st.none() | st.datetimes(timezones=st.just(UTC))
    stored = st.none() | st.builds(StoredValue, json=st.just("1"), type=maybe_texts)
    return valued(
        StepRecord,
        texts,
        st.sampled_from(StepStatus),
        small,
        stored,
        maybe_texts,
        maybe_texts,
        stamps,
        stamps,
        st.none() | times,
        maybe_small,
        maybe_texts,
    )


def snapshots() -> st.SearchStrategy[Any]:
    return valued(WorkflowProgress, small, small, small, small, small, st.tuples(texts), times)


BUILT: list[tuple[str, Callable[..., Any], Callable[[], st.SearchStrategy[Any]]]] = [
    ("Outcome", make_outcome, outcomes),
    ("Progress", lambda *f: make_progress(*f), progresses),
    ("StateChange", _change, changes),
    ("StepRecord", step_record, records),
    ("WorkflowProgress", progress_snapshot, snapshots),
]


@pytest.mark.parametrize(("name", "build", "values"), BUILT, ids=[b[0] for b in BUILT])
@given(data=st.data())
def test_a_built_value_is_the_value_its_class_makes(
    name: str,
    build: Callable[..., Any],
    values: Callable[[], st.SearchStrategy[Any]],
    data: st.DataObject,
) -> None:
    fields, expected = data.draw(values())
    made = build(*fields)
    assert type(made) is type(expected)
    assert made == expected
    assert hash(made) == hash(expected)
    assert repr(made) == repr(expected)
    assert attrs.asdict(made) == attrs.asdict(expected)
    assert pickle.loads(pickle.dumps(made)) == expected
    assert copy.copy(made) == expected
    assert copy.deepcopy(made) == expected
    assert attrs.evolve(made) == expected
    first = attrs.fields(type(made))[0].name
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        setattr(made, first, None)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        delattr(made, first)
    assert getattr(made, first) == getattr(expected, first)
    assert weakref.ref(made)() is made


errors = st.builds(ValueError, texts)


@given(
    fields=st.tuples(
        texts,
        st.sampled_from(ProcessingStatus),
        st.sampled_from(RequestState),
        st.none() | small,
        st.none() | errors,
        st.none() | st.sampled_from(ErrorCategory),
        st.lists(
            st.builds(
                StateChange,
                from_state=st.sampled_from(RequestState),
                to_state=st.sampled_from(RequestState),
                at=times,
            ),
            max_size=3,
        ).map(tuple),
        st.dictionaries(texts, times, max_size=3),
        st.dictionaries(texts, errors, max_size=3),
        times,
    )
)
def test_a_built_processing_result_is_the_one_its_class_makes(fields: tuple[Any, ...]) -> None:
    # Its two mappings are read-only (as the class's converters make them), so it has no
    # hash and cannot be pickled: the checks of the other values that apply.
    request_id, status, state, value, error, category, history, timings, degraded, took = fields
    expected = ProcessingResult(
        request_id=request_id,
        status=status,
        state=state,
        value=value,
        error=error,
        category=category,
        history=history,
        stage_timings=timings,
        degraded=degraded,
        duration=took,
    )
    made = _build_result(
        request_id,
        status,
        state,
        value,
        error,
        category,
        history,
        MappingProxyType(dict(timings)),
        MappingProxyType(dict(degraded)),
        took,
    )
    assert type(made) is ProcessingResult
    assert made == expected
    assert repr(made) == repr(expected)
    assert attrs.asdict(made) == attrs.asdict(expected)
    assert attrs.evolve(made) == expected
    assert copy.copy(made) == expected
    assert type(made.stage_timings) is type(expected.stage_timings) is MappingProxyType
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        made.value = None  # type: ignore[misc]
    assert weakref.ref(made)() is made


@pytest.mark.parametrize(
    "build",
    [make_outcome, _build_progress, _change, step_record, progress_snapshot, _build_result],
    ids=["Outcome", "Progress", "StateChange", "StepRecord", "WorkflowProgress", "Result"],
)
def test_the_engines_build_their_values_the_fast_way(build: Callable[..., Any]) -> None:
    # The twin is made only when every field still has its slot's own descriptor (builder
    # called before lazy_field); the descriptor way is the fallback, as correct and about
    # three times the cost.
    twin = build.__globals__.get("_twin")
    assert twin is not None
    assert twin.__slots__ == ()
    assert twin.__mro__[1] is build.__globals__["_cls"]


@attrs.frozen
class _Lazy:
    when: datetime | float
    note: str


def _utc(stamp: float) -> datetime:
    return datetime.fromtimestamp(stamp, UTC)


_build_lazy = builder(_Lazy)
_refill_lazy = refiller(_Lazy, "note")
_lazy_slot = lazy_field(_Lazy, "when", float, _utc, keep=True)


@given(stamp=st.floats(0, 2e9), note=texts, again=texts)
def test_a_lazy_field_reads_its_value_from_a_built_object(
    stamp: float, note: str, again: str
) -> None:
    made = _build_lazy(stamp, note)
    assert type(made) is _Lazy
    assert _lazy_slot.__get__(made) == stamp  # the placeholder, as the builder set it
    assert made.when == _utc(stamp)
    assert _lazy_slot.__get__(made) == _utc(stamp)  # kept once read
    assert made == _Lazy(_utc(stamp), note)
    _refill_lazy(made, again)
    assert made.note == again


@attrs.frozen(slots=False)
class _NoSlots:
    a: int
    b: int = 0


def test_a_class_without_slots_is_refused() -> None:
    # builder is for slotted classes: one without slots has no slot descriptors to use.
    with pytest.raises(AttributeError):
        builder(_NoSlots)
