"""The Redis circuit breaker on a fake clock, and which errors trip it."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from adapters.redis.breaker import CircuitBreaker, Permit
from adapters.redis.errors import coordination_errors
from chat_service.config import ConfigError, Settings
from chat_service.ports import CoordinationUnavailable


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tripped(cooldown: float = 5.0) -> tuple[CircuitBreaker, FakeClock]:
    clock = FakeClock()
    breaker = CircuitBreaker(cooldown=cooldown, clock=clock)
    assert breaker.allow() is Permit.CALL
    breaker.failed()
    return breaker, clock


def test_closed_lets_every_call_through() -> None:
    breaker = CircuitBreaker(clock=FakeClock())
    assert [breaker.allow() for _ in range(3)] == [Permit.CALL] * 3
    assert breaker.state == "closed"


def test_one_failure_opens_it_for_the_cooldown() -> None:
    breaker, clock = tripped(cooldown=5)
    assert breaker.state == "open"
    assert breaker.allow() is None
    clock.now += 4.9
    assert breaker.allow() is None
    assert breaker.retry_in == pytest.approx(0.1)


def test_after_the_cooldown_one_probe_at_a_time() -> None:
    breaker, clock = tripped(cooldown=5)
    clock.now += 5
    assert breaker.state == "half-open"
    assert breaker.allow() is Permit.PROBE
    assert breaker.allow() is None  # the others still fail fast
    clock.now += 60  # however long the probe takes
    assert breaker.allow() is None


def test_a_probe_that_succeeds_closes_it() -> None:
    breaker, clock = tripped()
    clock.now += 5
    assert breaker.allow() is Permit.PROBE
    breaker.succeeded()
    assert breaker.state == "closed"
    assert breaker.allow() is Permit.CALL


def test_a_probe_that_fails_opens_it_for_another_cooldown() -> None:
    breaker, clock = tripped()
    clock.now += 5
    assert breaker.allow() is Permit.PROBE
    breaker.failed()
    assert breaker.allow() is None
    clock.now += 4.9
    assert breaker.allow() is None
    clock.now += 0.1
    assert breaker.allow() is Permit.PROBE


def test_an_abandoned_probe_passes_its_turn_on() -> None:
    breaker, clock = tripped()
    clock.now += 5
    permit = breaker.allow()
    assert permit is Permit.PROBE
    breaker.abandoned(permit)
    assert breaker.allow() is Permit.PROBE


def test_an_abandoned_ordinary_call_does_not_free_the_probes_turn() -> None:
    breaker, clock = tripped()
    clock.now += 5
    assert breaker.allow() is Permit.PROBE
    breaker.abandoned(Permit.CALL)  # a call let in before the breaker opened
    assert breaker.allow() is None


def test_any_answer_from_redis_closes_it() -> None:
    # e.g. a lock renewal, which is never gated, got through.
    breaker, _clock = tripped()
    breaker.succeeded()
    assert breaker.state == "closed"


def test_a_negative_cooldown_is_refused() -> None:
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker(cooldown=-1)


# ------------------------------------------------- what coordination_errors reports


def run(breaker: CircuitBreaker, error: BaseException, *, gated: bool = True) -> None:
    with pytest.raises(CoordinationUnavailable), coordination_errors("op", breaker, gated=gated):
        raise error


@pytest.mark.parametrize(
    "error",
    [
        RedisConnectionError("Error 111 connecting"),
        RedisTimeoutError("Timeout reading from socket"),
        ConnectionResetError(),
    ],
)
def test_failing_to_reach_redis_trips_it(error: BaseException) -> None:
    breaker = CircuitBreaker(clock=FakeClock())
    run(breaker, error)
    assert breaker.state == "open"


@pytest.mark.parametrize("error", [ResponseError("ERR bad"), ReadOnlyError("READONLY replica")])
def test_an_error_redis_answered_with_does_not(error: BaseException) -> None:
    breaker = CircuitBreaker(clock=FakeClock())
    run(breaker, error)
    assert breaker.state == "closed"


def test_no_free_connection_in_our_own_pool_does_not() -> None:
    breaker, clock = tripped()
    clock.now += 5
    exhausted = RedisConnectionError("No connection available.")
    exhausted.__cause__ = TimeoutError()
    run(breaker, exhausted)  # this was the probe: it tells nothing...
    assert breaker.allow() is Permit.PROBE  # ...so the next call probes


def test_while_open_gated_calls_fail_without_running() -> None:
    breaker, _clock = tripped()
    ran = False
    with (
        pytest.raises(CoordinationUnavailable, match="skipped"),
        coordination_errors("op", breaker),
    ):
        ran = True
    assert not ran


def test_ungated_calls_run_while_open_and_report_success() -> None:
    breaker, _clock = tripped()
    with coordination_errors("renew", breaker, gated=False):
        pass
    assert breaker.state == "closed"


def test_a_cancelled_probe_passes_its_turn_on() -> None:
    breaker, clock = tripped()
    clock.now += 5
    with pytest.raises(asyncio.CancelledError), coordination_errors("op", breaker):
        raise asyncio.CancelledError
    assert breaker.allow() is Permit.PROBE


# ----------------------------------------------------------------- the setting


def test_the_cooldown_comes_from_redis_breaker_seconds() -> None:
    assert Settings.from_env({}).redis_breaker_seconds == 3.0
    assert Settings.from_env({"REDIS_BREAKER_SECONDS": "0.5"}).redis_breaker_seconds == 0.5
    for bad in ("nan", "-1", "soon"):
        with pytest.raises(ConfigError, match="REDIS_BREAKER_SECONDS"):
            Settings.from_env({"REDIS_BREAKER_SECONDS": bad})
