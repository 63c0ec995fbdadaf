"""Routing: classify a request into a kind, and pick the pipeline for that kind.

The classifier is a plain function (cheap rules first, as a fast path), sync or async, so
a cheap rule can answer at once and only ambiguous requests pay for an async classifier.
"""

from __future__ import annotations

import enum
import inspect
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import final

import attrs

from .._errors import UnknownKindError
from ._pipeline import Pipeline
from ._request import Request

__all__ = ("RequestKind", "Router", "pick")

Classifier = Callable[[Request], "str | Awaitable[str]"]


class RequestKind(enum.StrEnum):
    """The request kinds trioflow names out of the box.

    A ``StrEnum``: each member is also its string value, so pipelines can be keyed by members
    or by strings, and kinds of your own are plain strings.
    """

    SIMPLE_QUERY = "simple_query"
    CONTEXT_QUERY = "context_query"
    TOOL_EXECUTION = "tool_execution"
    COMPLEX_WORKFLOW = "complex_workflow"
    STREAMING = "streaming"


@final
@attrs.define(eq=False, init=False, repr=False)
class Router:
    """Picks a pipeline for each request by its kind.

    Example::

        def classify(request: Request) -> str:
            if request.payload.get("tool"):
                return RequestKind.TOOL_EXECUTION
            return RequestKind.SIMPLE_QUERY

        router = Router(classify, {
            RequestKind.SIMPLE_QUERY: simple_pipeline,
            RequestKind.TOOL_EXECUTION: tool_pipeline,
        })
        pipeline = await router.route(request)

    Args:
        classify: ``classify(request) -> kind``, sync or async; a kind is a string (a
            :class:`RequestKind` or one of your own).
        pipelines: The pipeline for each kind.

    Raises:
        TypeError: ``classify`` is not callable, or ``pipelines`` is not a mapping of string
            kinds to pipelines.
        ValueError: ``pipelines`` is empty.
    """

    _classify: Classifier
    _pipelines: Mapping[str, Pipeline]

    def __init__(self, classify: Classifier, pipelines: Mapping[str, Pipeline]) -> None:
        if not callable(classify):
            raise TypeError(f"classify must be callable, got {classify!r}")
        if not isinstance(pipelines, Mapping):
            raise TypeError(f"pipelines must be a mapping of kind to Pipeline, got {pipelines!r}")
        if not pipelines:
            raise ValueError("pipelines must hold at least one kind, got none")
        for kind, pipeline in pipelines.items():
            if not isinstance(kind, str) or not kind:
                raise TypeError(f"pipeline kinds must be non-empty strings, got {kind!r}")
            if not isinstance(pipeline, Pipeline):
                raise TypeError(f"pipelines[{kind!r}] must be a Pipeline, got {pipeline!r}")
        self._classify = classify
        self._pipelines = MappingProxyType({str(k): p for k, p in pipelines.items()})

    def __repr__(self) -> str:
        return f"Router(kinds={list(self._pipelines)})"

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds this router has pipelines for."""
        return tuple(self._pipelines)

    @property
    def pipelines(self) -> Mapping[str, Pipeline]:
        """The pipeline of each kind (read-only)."""
        return self._pipelines

    def pipeline(self, kind: str) -> Pipeline:
        """Return the pipeline of a kind.

        Args:
            kind: The kind.

        Returns:
            Its pipeline.

        Raises:
            UnknownKindError: No pipeline has that kind; the message lists the known kinds.
        """
        try:
            return self._pipelines[kind]
        except (KeyError, TypeError):
            raise UnknownKindError(kind, list(self._pipelines)) from None

    async def classify(self, request: Request) -> str:
        """Classify a request with the router's classifier (sync or async).

        Args:
            request: The request.

        Returns:
            Its kind.

        Raises:
            TypeError: The classifier returned something that is not a non-empty string.
            Exception: Whatever the classifier raised.
        """
        kind = self._classify(request)
        if type(kind) is str and kind:
            return kind
        return await self._kind_of(kind)

    @staticmethod
    async def _kind_of(kind: object) -> str:
        """The kind a classifier gave other than a plain str: awaited if awaitable, checked."""
        if not isinstance(kind, str) and inspect.isawaitable(kind):
            kind = await kind
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"classify must return a non-empty str kind, got {kind!r}")
        return kind

    async def route(self, request: Request) -> Pipeline:
        """Pick the pipeline for a request, classifying it unless its kind is already set.

        Sets ``request.kind`` to the kind found.

        Args:
            request: The request.

        Returns:
            The pipeline of its kind.

        Raises:
            UnknownKindError: The kind has no pipeline; the message lists the known kinds.
            TypeError: The classifier returned something that is not a string.
            Exception: Whatever the classifier raised.
        """
        picked = pick(self, request)
        return picked if type(picked) is Pipeline else await picked

    async def _route_awaited(self, request: Request, given: object) -> Pipeline:
        """The rest of :meth:`route` when the classifier gave something but a plain str."""
        kind = request.kind = await self._kind_of(given)
        return self.pipeline(kind)


def pick(router: Router, request: Request) -> Pipeline | Awaitable[Pipeline]:
    """:meth:`Router.route` without a coroutine when the classifier returns a str at once.

    What the coordinator calls once per request: the pipeline, or (a classifier that returned
    an awaitable, or something to be refused) the coroutine that finishes the routing.

    Raises:
        UnknownKindError: As :meth:`Router.route`.
        Exception: Whatever the classifier raised.
    """
    kind = request.kind
    if kind is None:
        given: object = router._classify(request)
        if type(given) is not str or not given:
            return router._route_awaited(request, given)
        kind = request.kind = given
    if type(kind) is str:
        pipeline = router._pipelines.get(kind)
        if pipeline is not None:
            return pipeline
    return router.pipeline(kind)
