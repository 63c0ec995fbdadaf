from __future__ import annotations

import collections
import inspect

import trioflow


def test_all_is_a_tuple_of_unique_names() -> None:
    assert isinstance(trioflow.__all__, tuple)
    counts = collections.Counter(trioflow.__all__)
    assert [name for name, n in counts.items() if n > 1] == []


def test_every_public_name_exists_and_is_documented() -> None:
    undocumented = []
    for name in trioflow.__all__:
        obj = getattr(trioflow, name)
        doc = inspect.getdoc(obj)
        if not doc or not doc.strip():
            undocumented.append(name)
    assert undocumented == []


def test_public_objects_report_the_public_module() -> None:
    wrong = [
        name
        for name in trioflow.__all__
        if getattr(getattr(trioflow, name), "__module__", "trioflow").startswith("trioflow._")
    ]
    assert wrong == []


def test_no_private_module_is_exported() -> None:
    assert not [n for n in trioflow.__all__ if n.startswith("_")]
