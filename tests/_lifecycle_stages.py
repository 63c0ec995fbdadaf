"""The seven non-terminal request states as (stage name, state): the full lifecycle."""

from __future__ import annotations

from trioflow.lifecycle import RequestState

S = RequestState

SEVEN_STAGES: list[tuple[str, RequestState]] = [
    ("receive", S.RECEIVED),
    ("validate", S.VALIDATED),
    ("plan", S.PLANNED),
    ("context", S.CONTEXT_GATHERING),
    ("process", S.PROCESSING),
    ("tools", S.TOOL_EXECUTION),
    ("format", S.RESPONSE_FORMATTING),
]
