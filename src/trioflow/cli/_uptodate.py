"""Up-to-date checks: skip a step whose inputs did not change since its last success.

A step with ``sources`` gets a key: a digest of its command, its declared environment, its
working directory and the content of every file its ``sources`` globs match. A step that
succeeded returns its key as its value, so the key is kept in the state store with the step's
record (SQLite or Redis alike, no table of its own). A later run skips the step, as
``up to date``, when its key equals the key of its last success and every ``generates`` glob
matches something.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trioflow

_VALUE_KEY: Final = "up_to_date_key"
_VALUE_FLAG: Final = "up_to_date"


def matched_files(directory: Path, patterns: Iterable[str]) -> list[Path]:
    """Return the files the glob patterns match, sorted, directories left out.

    ``**`` matches any number of directories; patterns are relative to ``directory`` unless
    absolute. Hidden files are matched only by a pattern that names the dot.

    Args:
        directory: The directory relative patterns start from.
        patterns: The glob patterns.

    Returns:
        The matched files, each once, as absolute paths, in sorted order.
    """
    root = str(directory)
    found: set[str] = set()
    for pattern in patterns:
        for match in glob.glob(pattern, root_dir=root, recursive=True):
            path = os.path.join(root, match)
            if os.path.isfile(path):
                found.add(os.path.normpath(path))
    return [Path(path) for path in sorted(found)]


def sources_digest(directory: Path, patterns: Sequence[str]) -> str:
    """Return a digest of the files the patterns match: their paths and contents.

    A pattern that matches nothing adds nothing: the digest of no files is a fixed value, so a
    step whose sources do not exist yet is up to date only while they still do not exist.

    Args:
        directory: The directory relative patterns start from.
        patterns: The glob patterns.

    Returns:
        A hex digest.
    """
    digest = hashlib.sha256()
    prefix = os.path.join(str(directory), "")
    for path in matched_files(directory, patterns):
        name = str(path).removeprefix(prefix)  # relative when inside the directory
        digest.update(f"{name}\0".encode())
        try:
            with open(path, "rb") as file:
                content = hashlib.file_digest(file, "sha256").digest()  # streams, in C
        except OSError as exc:  # gone or unreadable meanwhile: a different input
            content = f"unreadable: {exc.strerror}".encode()
        digest.update(content)
    return digest.hexdigest()


def all_generated(directory: Path, patterns: Iterable[str]) -> bool:
    """Whether every ``generates`` pattern matches at least one existing file or directory.

    Args:
        directory: The directory relative patterns start from.
        patterns: The glob patterns.

    Returns:
        True when none is missing.
    """
    return all(glob.glob(pattern, root_dir=directory, recursive=True) for pattern in patterns)


def step_key(command: Sequence[str] | str, env: Mapping[str, str], cwd: Path, sources: str) -> str:
    """Return a step's up-to-date key.

    Args:
        command: The command as it runs (placeholders of the run left as written).
        env: The variables the workflow file sets for the step (not the whole environment).
        cwd: The absolute working directory.
        sources: The :func:`sources_digest`.

    Returns:
        A hex digest.
    """
    definition = json.dumps(
        [command if isinstance(command, str) else list(command), sorted(env.items()), str(cwd)],
        separators=(",", ":"),
    )
    return hashlib.sha256(f"{definition}\0{sources}".encode()).hexdigest()


def success_value(key: str, *, up_to_date: bool) -> dict[str, Any]:
    """Return what a step with sources returns: the value stored with its record.

    Args:
        key: The step's key.
        up_to_date: Whether it was skipped as up to date (its command did not run).

    Returns:
        The JSON-ready value.
    """
    return {_VALUE_KEY: key, _VALUE_FLAG: up_to_date}


def was_up_to_date(value: object) -> bool:
    """Whether a step's value says it was skipped as up to date.

    Args:
        value: The step's value, as returned or as stored (JSON data).

    Returns:
        True for the value of an up-to-date step.
    """
    return isinstance(value, dict) and value.get(_VALUE_FLAG) is True


async def last_keys(
    store: trioflow.WorkflowStore, workflow: str, steps: Collection[str]
) -> dict[str, str]:
    """Return the key of each step's last success in the runs of a workflow.

    Runs are read from the most recently updated back, until every step is found.

    Args:
        store: The state store.
        workflow: The workflow's name.
        steps: The names of the steps with sources.

    Returns:
        Step name -> key, for the steps that succeeded with a key.
    """
    keys: dict[str, str] = {}
    wanted = set(steps)
    if not wanted:
        return keys
    runs = sorted(
        (r for r in await store.list_runs() if r.workflow == workflow),
        key=lambda r: r.updated_at,
        reverse=True,
    )
    for head in runs:
        if not wanted.intersection(head.shape):
            continue
        record = await store.load_run(head.run_id)
        if record is None:  # pragma: no cover - removed meanwhile
            continue
        for name in list(wanted):
            stored = record.steps.get(name)
            if stored is None or stored.status is not trioflow.StepStatus.SUCCEEDED:
                continue
            if stored.value is None:
                continue
            data = stored.value.data()
            if isinstance(data, dict) and isinstance(data.get(_VALUE_KEY), str):
                keys[name] = data[_VALUE_KEY]
                wanted.discard(name)
        if not wanted:
            break
    return keys
