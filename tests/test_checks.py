"""One contract for every argument check: the predicates of _checks, and every public API.

A wrong type is a TypeError, a value out of range a ValueError, and the message reads
"NAME must be EXPECTED, got VALUE (TYPE)". ``timeout=math.inf`` means no deadline.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _lifecycle_stages import SEVEN_STAGES
from trioflow import (
    AdaptiveConcurrency,
    CircuitBreaker,
    ConfigError,
    HealthMonitor,
    KeyedRateLimiter,
    ResourceManager,
    RetryPolicies,
    RetryPolicy,
    SQLiteStore,
    TokenBucket,
    Workflow,
    amap,
    as_completed,
    hedge,
    resilient,
    run_batch,
    run_workflow,
)
from trioflow._checks import (
    NotAwaitableError,
    check_async_callable,
    check_bool,
    check_fraction,
    check_int,
    check_name,
    check_number,
    check_percent,
    check_timeout,
    describe,
    is_awaitable,
    is_sync_function,
    no_deadline,
    not_awaitable,
    problem,
    validator,
)
from trioflow.cli._spec import SpecError, parse_spec
from trioflow.lifecycle import (
    OrchestrationConfig,
    Pipeline,
    ProcessingStatus,
    Request,
    RequestState,
    Stage,
    gather_partial,
    load_config,
)

pytestmark = pytest.mark.anyio

# --- the predicates ------------------------------------------------------------------------

not_numbers = st.one_of(
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.complex_numbers(allow_nan=False, allow_infinity=False),
)
reals = st.one_of(st.integers(-(10**20), 10**20), st.floats(allow_nan=False, allow_infinity=False))


def message(name: str, value: object) -> str:
    """The shape every message has, as a regex."""
    return rf"{re.escape(name)} must be .+, got {re.escape(describe(value))}"


def test_describe_shows_the_repr_and_the_type() -> None:
    assert describe("5") == "'5' (str)"
    assert describe(True) == "True (bool)"
    assert describe(math.nan) == "nan (float)"
    assert describe(None) == "None (NoneType)"
    long = describe("x" * 100)
    assert long.endswith("... (str)")
    assert len(long) < 80


@given(st.integers(), st.integers(-50, 50), st.integers(0, 100))
def test_check_int_takes_ints_in_range(value: int, minimum: int, width: int) -> None:
    maximum = minimum + width
    if minimum <= value <= maximum:
        assert check_int(value, "n", minimum=minimum, maximum=maximum) == value
    else:
        with pytest.raises(ValueError, match=rf"^n must be an int in \[{minimum}, {maximum}\], "):
            check_int(value, "n", minimum=minimum, maximum=maximum)


@given(st.one_of(not_numbers, st.floats()))
def test_check_int_refuses_every_other_type(value: object) -> None:
    with pytest.raises(TypeError, match=f"^{message('n', value)}$"):
        check_int(value, "n", minimum=1)


def test_check_int_wording() -> None:
    with pytest.raises(TypeError, match=r"^limit must be an int >= 1, got '5' \(str\)$"):
        check_int("5", "limit", minimum=1)
    with pytest.raises(ValueError, match=r"^limit must be an int >= 1, got 0 \(int\)$"):
        check_int(0, "limit", minimum=1)
    with pytest.raises(ValueError, match=r"^n must be an int <= 3, got 4 \(int\)$"):
        check_int(4, "n", maximum=3)
    assert check_int(-(10**30), "n") == -(10**30)


@given(reals, st.floats(-10, 10), st.booleans())
def test_check_number_takes_finite_numbers_above_the_bound(
    value: float, minimum: float, strict: bool
) -> None:
    inside = value > minimum if strict else value >= minimum
    if inside:
        assert check_number(value, "x", minimum=minimum, strict=strict) == float(value)
        assert problem(check_number, value, minimum=minimum, strict=strict) is None
    else:
        with pytest.raises(ValueError, match=f"^{message('x', value)}$"):
            check_number(value, "x", minimum=minimum, strict=strict)


@given(not_numbers)
def test_check_number_refuses_every_other_type(value: object) -> None:
    for check in (check_number, check_fraction, check_percent, check_timeout):
        if value is None and check is check_timeout:
            continue  # None is no deadline
        with pytest.raises(TypeError, match=f"^{message('x', value)}$"):
            check(value, "x")


@given(st.sampled_from([math.nan, math.inf, -math.inf, 10**400]))
def test_check_number_refuses_nan_and_infinity_unless_told(value: float) -> None:
    with pytest.raises(ValueError, match=r"^x must be a finite number >= 0, got "):
        check_number(value, "x", minimum=0)
    if value == value and value > 0:  # inf, and an int too large for a float
        assert check_number(value, "x", minimum=0, finite=False) == math.inf
    else:
        with pytest.raises(ValueError, match=r"^x must be a number >= 0, got "):
            check_number(value, "x", minimum=0, finite=False)


def test_check_number_wording() -> None:
    with pytest.raises(ValueError, match=r"^rate must be a finite number > 0, got 0 \(int\)$"):
        check_number(0, "rate", minimum=0, strict=True)
    with pytest.raises(ValueError, match=r"^x must be a number in \[0, 2000000\], got -1 \(int\)"):
        check_number(-1, "x", minimum=0, maximum=2_000_000)
    with pytest.raises(ValueError, match=r"^x must be a finite number <= 1\.5, got 2 \(int\)"):
        check_number(2, "x", maximum=1.5)
    with pytest.raises(TypeError, match=r"^x must be a finite number, got True \(bool\)$"):
        check_number(True, "x")


@given(st.one_of(reals, st.just(math.nan), st.just(math.inf)), st.booleans())
def test_check_fraction(value: float, strict: bool) -> None:
    inside = 0 < value < 1 if strict else 0 <= value <= 1
    if inside:
        assert check_fraction(value, "f", strict=strict) == value
    else:
        interval = r"\(0, 1\)" if strict else r"\[0, 1\]"
        with pytest.raises(ValueError, match=rf"^f must be a number in {interval}, got "):
            check_fraction(value, "f", strict=strict)


@given(st.one_of(reals, st.just(math.nan), st.just(math.inf)))
def test_check_percent(value: float) -> None:
    if 0 < value <= 100:
        assert check_percent(value, "p") == value
    else:
        with pytest.raises(ValueError, match=r"^p must be a number in \(0, 100\], got "):
            check_percent(value, "p")


@given(st.one_of(st.none(), reals, st.just(math.nan), st.just(math.inf), st.just(-math.inf)))
def test_check_timeout(value: float | None) -> None:
    if value is None or value == math.inf:
        assert check_timeout(value) is None  # no deadline
    elif value >= 0:
        assert check_timeout(value) == float(value)
    else:
        with pytest.raises(
            ValueError,
            match=r"^timeout must be a number of seconds >= 0 or None \(no deadline\), got ",
        ):
            check_timeout(value)


def test_check_timeout_names_the_argument_and_has_no_deadline_past_any_float() -> None:
    with pytest.raises(TypeError, match=r"^timeout of step 'a' must be .*, got '5' \(str\)$"):
        check_timeout("5", "timeout of step 'a'")
    assert check_timeout(10**400) is None
    assert check_timeout(0) == 0.0
    assert type(check_timeout(3)) is float


@given(st.one_of(st.booleans(), not_numbers, reals))
def test_check_bool(value: object) -> None:
    if isinstance(value, bool):
        assert check_bool(value, "flag") is value
    else:
        with pytest.raises(TypeError, match=f"^{message('flag', value)}$"):
            check_bool(value, "flag")


def test_check_name() -> None:
    assert check_name("a", "name") == "a"
    for bad in ("", 3, None):
        with pytest.raises(TypeError, match=f"^{message('name', bad)}$"):
            check_name(bad, "name")


def test_no_deadline_turns_only_infinity_into_none() -> None:
    assert no_deadline(math.inf) is None
    assert no_deadline(2.5) == 2.5
    assert no_deadline("x") == "x"
    assert no_deadline(None) is None


def test_a_check_is_an_attrs_validator_naming_the_field_by_its_alias() -> None:
    @attrs.define
    class Thing:
        _size: int = attrs.field(alias="size", validator=validator(check_int, minimum=1))
        rate: float = attrs.field(default=1.0, validator=validator(check_number, minimum=0))

    assert Thing(size=3).rate == 1.0
    with pytest.raises(TypeError, match=r"^size must be an int >= 1, got '5' \(str\)$"):
        Thing(size="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^rate must be a finite number >= 0, got -1 \(int\)$"):
        Thing(size=1, rate=-1)


def test_problem_is_the_message_without_the_name() -> None:
    assert problem(check_int, 0, minimum=1) == "must be an int >= 1, got 0 (int)"
    assert problem(check_percent, 150) == "must be a number in (0, 100], got 150 (int)"
    assert problem(check_int, 1, minimum=1) is None


# --- every public API with a numeric argument ----------------------------------------------

INT, NUMBER, TIMEOUT = "an int", "a finite number", "a timeout"


async def _op() -> int:
    return 1


async def _one(item: int) -> int:
    return item


async def _step(ctx: Any) -> None:
    pass


async def _stage(request: Request) -> None:
    pass


def _pipeline() -> Pipeline:
    return Pipeline([Stage(name, state, _stage) for name, state in SEVEN_STAGES])


async def _drain(**kwargs: Any) -> None:
    async with as_completed([_op], **kwargs) as outcomes:
        async for _ in outcomes:
            pass


async def _run_pipeline(timeout: Any) -> None:
    await _pipeline().run(Request(), timeout=timeout)


def _adaptive(**kwargs: Any) -> AdaptiveConcurrency:
    return AdaptiveConcurrency(ResourceManager(limit=4), **{"max_limit": 9, **kwargs})


Build = Callable[[Any], object]

CASES: list[tuple[str, str, Build]] = [
    ("limit", INT, lambda v: ResourceManager(limit=v)),
    ("pools['db']", INT, lambda v: ResourceManager(pools={"db": v})),
    ("attempts", INT, lambda v: RetryPolicy(attempts=v)),
    ("initial_delay", NUMBER, lambda v: RetryPolicy(initial_delay=v)),
    ("multiplier", NUMBER, lambda v: RetryPolicy(multiplier=v)),
    ("max_delay", NUMBER, lambda v: RetryPolicy(max_delay=v)),
    ("jitter", NUMBER, lambda v: RetryPolicy(jitter=v)),
    ("failure_threshold", INT, lambda v: CircuitBreaker(failure_threshold=v)),
    ("half_open_max_calls", INT, lambda v: CircuitBreaker(half_open_max_calls=v)),
    ("reset_timeout", NUMBER, lambda v: CircuitBreaker(reset_timeout=v)),
    ("rate", NUMBER, lambda v: TokenBucket(rate=v, burst=1)),
    ("burst", NUMBER, lambda v: TokenBucket(rate=1, burst=v)),
    ("rate", NUMBER, lambda v: KeyedRateLimiter(rate=v, burst=1)),
    ("burst", NUMBER, lambda v: KeyedRateLimiter(rate=1, burst=v)),
    ("max_keys", INT, lambda v: KeyedRateLimiter(rate=1, burst=1, max_keys=v)),
    ("limits['cli'] rate", NUMBER, lambda v: KeyedRateLimiter(1, 1, limits={"cli": (v, 1)})),
    ("limits['cli'] burst", NUMBER, lambda v: KeyedRateLimiter(1, 1, limits={"cli": (1, v)})),
    ("interval", NUMBER, lambda v: HealthMonitor(interval=v)),
    ("max_cpu_percent", NUMBER, lambda v: HealthMonitor(max_cpu_percent=v)),
    ("max_memory_percent", NUMBER, lambda v: HealthMonitor(max_memory_percent=v)),
    ("consecutive_samples", INT, lambda v: HealthMonitor(consecutive_samples=v)),
    ("min_limit", INT, lambda v: _adaptive(min_limit=v)),
    ("max_limit", INT, lambda v: _adaptive(max_limit=v)),
    ("initial_limit", INT, lambda v: _adaptive(initial_limit=v)),
    ("tolerance", NUMBER, lambda v: _adaptive(tolerance=v)),
    ("backoff", NUMBER, lambda v: _adaptive(backoff=v)),
    ("max_error_rate", NUMBER, lambda v: _adaptive(max_error_rate=v)),
    ("baseline_windows", INT, lambda v: _adaptive(baseline_windows=v)),
    ("min_wait_fraction", NUMBER, lambda v: RetryPolicies({}, min_wait_fraction=v)),
    ("busy_timeout", NUMBER, lambda v: SQLiteStore("x.db", busy_timeout=v)),
    ("delay", NUMBER, lambda v: hedge(_op, delay=v)),
    ("max_attempts", INT, lambda v: hedge(_op, delay=1, max_attempts=v)),
    ("hedge", NUMBER, lambda v: resilient(_op, hedge=v)),
    ("hedge_attempts", INT, lambda v: resilient(_op, hedge_attempts=v)),
    ("limit", INT, lambda v: run_batch([_op], limit=v)),
    ("limit", INT, lambda v: amap(_one, [1], limit=v)),
    ("limit", INT, lambda v: as_completed([_op], limit=v)),
    ("limit", INT, lambda v: run_workflow(Workflow("w").step("a", _step), limit=v)),
    ("timeout", TIMEOUT, lambda v: run_batch([_op], timeout=v)),
    ("timeout", TIMEOUT, lambda v: amap(_one, [1], timeout=v)),
    ("timeout", TIMEOUT, lambda v: _drain(timeout=v)),
    ("timeout", TIMEOUT, lambda v: resilient(_op, timeout=v)),
    ("step 'a': timeout", TIMEOUT, lambda v: Workflow("w").step("a", _step, timeout=v)),
    (
        "stage 's': timeout",
        TIMEOUT,
        lambda v: Stage("s", RequestState.VALIDATED, _stage, timeout=v),
    ),
    ("timeout", TIMEOUT, _run_pipeline),
    ("budget", TIMEOUT, lambda v: gather_partial({"a": _op}, budget=v)),
]
IDS = [f"{index}-{name}" for index, (name, _, _) in enumerate(CASES)]


async def _call(build: Build, value: object) -> object:
    result = build(value)
    if inspect.isawaitable(result):
        return await result
    if isinstance(result, SQLiteStore):
        result.close()
    return result


def _bad_values(kind: str) -> list[tuple[object, type[Exception]]]:
    wrong_type: list[tuple[object, type[Exception]]] = [("5", TypeError), (True, TypeError)]
    if kind == INT:
        return [*wrong_type, (2.0, TypeError), (math.nan, TypeError), (-1, ValueError)]
    if kind == NUMBER:  # infinity means nothing for a rate, a delay or a threshold
        return [*wrong_type, (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError)]
    return [*wrong_type, (-1, ValueError), (math.nan, ValueError), (-math.inf, ValueError)]


@pytest.mark.parametrize(("name", "kind", "build"), CASES, ids=IDS)
async def test_every_numeric_argument_follows_the_contract(
    name: str, kind: str, build: Build
) -> None:
    for value, error in _bad_values(kind):
        with pytest.raises(error) as info:
            await _call(build, value)
        assert type(info.value) is error, (value, info.value)
        assert re.fullmatch(message(name, value), str(info.value)), str(info.value)


TIMEOUTS = [(name, build) for name, kind, build in CASES if kind == TIMEOUT]


@pytest.mark.parametrize(("name", "build"), TIMEOUTS, ids=[str(i) for i in range(len(TIMEOUTS))])
async def test_every_timeout_takes_infinity_and_none_as_no_deadline(
    name: str, build: Build
) -> None:
    for value in (math.inf, None, 5):
        await _call(build, value)


async def _slow() -> str:
    await anyio.sleep(10_000)
    return "done"


async def _slow_one(item: int) -> int:
    await anyio.sleep(10_000)
    return item


async def test_an_infinite_timeout_lets_slow_work_finish() -> None:
    start = anyio.current_time()
    assert (await run_batch([_slow], timeout=math.inf)).values == ("done",)
    assert await amap(_slow_one, [1, 2], timeout=math.inf) == [1, 2]
    async with as_completed([_slow], timeout=math.inf) as outcomes:
        assert [o.value async for o in outcomes] == ["done"]
    assert await resilient(_slow, timeout=math.inf)() == "done"
    gathered = await gather_partial({"a": _slow}, budget=math.inf)
    assert dict(gathered.values) == {"a": "done"}

    async def slow_step(ctx: Any) -> str:
        return await _slow()

    wf = Workflow("w").step("a", slow_step, timeout=math.inf)
    assert wf.steps["a"].timeout is None
    assert (await run_workflow(wf)).ok

    async def slow_stage(request: Request) -> str:
        return await _slow()

    stages = [Stage(name, state, slow_stage, timeout=math.inf) for name, state in SEVEN_STAGES]
    assert all(stage.timeout is None for stage in stages)
    result = await Pipeline(stages).run(Request(), timeout=math.inf)
    assert result.status is ProcessingStatus.SUCCEEDED
    assert anyio.current_time() - start == 13 * 10_000.0  # 6 calls, and 7 stages


# --- the configuration loader ---------------------------------------------------------------

CONFIG_NUMBERS: list[tuple[str, str]] = [
    ("max_concurrency", INT),
    ("per_user_limit", INT),
    ("max_queue_depth", INT),
    ("metrics_interval", NUMBER),
    ("default_timeout", TIMEOUT),
    ("pools.llm", INT),
    ("retry.max_retries", INT),
    ("retry.initial_delay", NUMBER),
    ("retry.backoff_multiplier", NUMBER),
    ("retry.max_delay", NUMBER),
    ("retry.jitter", NUMBER),
    ("rate_limits.per_user.rate", NUMBER),
    ("rate_limits.per_user.per", NUMBER),
    ("rate_limits.per_user.burst", INT),
    ("health.interval", NUMBER),
    ("health.max_cpu_percent", NUMBER),
    ("health.max_memory_percent", NUMBER),
]


def _nested(path: str, value: object) -> dict[str, Any]:
    head, _, rest = path.partition(".")
    if not rest:
        return {head: value}
    inner = _nested(rest, value)
    if path.startswith("rate_limits.per_user."):
        inner["per_user"].setdefault("rate", 1)
    return {head: inner}


@pytest.mark.parametrize(("path", "kind"), CONFIG_NUMBERS)
def test_every_number_of_a_configuration_is_checked(path: str, kind: str) -> None:
    bad: list[object] = ["5", True, -1, math.nan] + ([] if kind == TIMEOUT else [math.inf])
    for value in bad:
        with pytest.raises(ConfigError) as info:
            load_config(_nested(path, value))
        assert [where for where, _ in info.value.problems] == [path], info.value.problems


def test_a_configured_problem_has_the_same_words_as_the_argument_check() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"rate_limits": {"per_user": {"rate": math.inf}}})
    assert list(info.value.problems) == [
        ("rate_limits.per_user.rate", "must be a finite number > 0, got inf (float)")
    ]
    with pytest.raises(ValueError, match=r"^rate must be a finite number > 0, got inf \(float\)$"):
        TokenBucket(rate=math.inf, burst=1)
    with pytest.raises(ConfigError) as info:
        OrchestrationConfig(max_concurrency="5")  # type: ignore[arg-type]
    assert list(info.value.problems) == [("max_concurrency", "must be an int >= 1, got '5' (str)")]


def test_an_infinite_default_timeout_is_no_deadline() -> None:
    assert load_config({"default_timeout": math.inf}).default_timeout is None
    assert load_config({"default_timeout": "none"}).default_timeout is None
    assert OrchestrationConfig(default_timeout=math.inf).default_timeout is None


def test_a_huge_integer_in_a_file_is_a_problem_not_an_overflow() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"retry": {"initial_delay": 10**400}})
    assert [where for where, _ in info.value.problems] == ["retry.initial_delay"]


async def test_an_async_iterable_input_is_checked_the_same_way() -> None:
    async def ops() -> AsyncIterator[Callable[[], Awaitable[int]]]:
        yield _op

    with pytest.raises(TypeError, match=r"^limit must be .*, got '5' \(str\)$"):
        await run_batch(ops(), limit="5")  # type: ignore[arg-type]


# --- the workflow files of the CLI -----------------------------------------------------------


def _spec_problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as info:
        parse_spec(text, path="flow.toml")
    return list(info.value.problems)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("timeout", "nan"),
        ("timeout", "0"),
        ("timeout", "-inf"),
        ("timeout", "'5'"),
        ("retry_delay", "inf"),
        ("retry_delay", "-1"),
        ("backoff", "inf"),
        ("backoff", "true"),
        ("retries", "1.5"),
        ("retries", "-1"),
    ],
)
def test_a_workflow_file_is_checked_by_the_same_predicates(key: str, value: str) -> None:
    found = _spec_problems(f'[steps.a]\nrun = ["x"]\n{key} = {value}\n')
    assert [where for where, _ in found] == [f"steps.a.{key}"], found


def test_a_workflow_file_timeout_of_inf_is_no_deadline() -> None:
    spec = parse_spec('[steps.a]\nrun = ["x"]\ntimeout = inf\n', path="flow.toml")
    assert spec.steps["a"].timeout is None


# --- async callables -------------------------------------------------------------------------


def _plain(n: int = 0) -> int:
    return n


async def _coroutine_function(n: int = 0) -> int:
    return n


def _generator() -> Any:
    yield 1


class _AsyncCall:
    async def __call__(self) -> int:
        return 1

    async def method(self) -> int:
        return 1

    def plain_method(self) -> int:
        return 1


class _SyncCall:
    def __call__(self) -> int:
        return 1


def _wrapping() -> Callable[[], Awaitable[int]]:
    @functools.wraps(_coroutine_function)
    def wrapper(n: int = 0) -> Awaitable[int]:
        return _coroutine_function(n)

    return wrapper


def test_check_async_callable_refuses_plain_functions_and_what_is_not_callable() -> None:
    for value in (_plain, functools.partial(_plain, 1), _generator, _AsyncCall().plain_method):
        assert is_sync_function(value)
        with pytest.raises(TypeError, match=r"^fn must be an async callable, got .*async def"):
            check_async_callable(value, "fn")
    with pytest.raises(TypeError, match=r"^fn must be an async callable, got 5 \(int\)$"):
        check_async_callable(5, "fn")
    with pytest.raises(TypeError, match=r"^operation 3 must be a zero-argument async callable"):
        check_async_callable(_plain, "operation 3", "a zero-argument async callable")


def test_check_async_callable_accepts_what_may_return_an_awaitable() -> None:
    for value in (
        _coroutine_function,
        functools.partial(_coroutine_function, 1),
        functools.partial(functools.partial(_coroutine_function), 1),
        _AsyncCall(),
        _AsyncCall().method,
        _SyncCall(),  # judged by what it returns
        lambda: _coroutine_function(1),
        _wrapping(),
        print,
    ):
        assert not is_sync_function(value)
        assert check_async_callable(value, "fn") is value


def test_is_awaitable_and_not_awaitable() -> None:
    coroutine = _coroutine_function()
    assert is_awaitable(coroutine)
    coroutine.close()
    assert not is_awaitable(5)
    error = not_awaitable("operation 2", 5)
    assert isinstance(error, NotAwaitableError)
    assert isinstance(error, TypeError)
    assert str(error) == "operation 2 must return an awaitable, got 5 (int)"
