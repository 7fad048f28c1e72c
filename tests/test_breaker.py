"""The circuit breaker and the retry backoff as state machines, on a fake clock: what a
provider outage looks like to them, at the issue's scale, in microseconds."""

from __future__ import annotations

import pytest

from gateway.config import BreakerConfig
from gateway.errors import BackendUnreachable, CircuitOpen, UpstreamHTTPError
from gateway.ops.metrics import Metrics
from gateway.resilience.breaker import BreakerState, CircuitBreaker
from gateway.resilience.model_breakers import MAX_UNLISTED_MODELS, Breakers
from gateway.resilience.retries import backoff_delay, failure_reason

DEFAULTS = BreakerConfig()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, rand: float = 0.0, **settings: float) -> CircuitBreaker:
    return CircuitBreaker(
        "openai",
        model="m",
        clock=clock,
        rand=lambda: rand,
        failures=int(settings.get("failures", 5)),
        reset_s=settings.get("reset_s", DEFAULTS.reset_s),
        max_reset_s=settings.get("max_reset_s", DEFAULTS.max_reset_s),
    )


def test_opens_after_consecutive_failures_and_refuses_with_the_time_left() -> None:
    clock = Clock()
    b = breaker(clock, failures=3, reset_s=10)
    for _ in range(2):
        b.acquire()
        b.record_failure(False, "500")
    b.acquire()
    b.record_success(False)  # a success resets the count
    for _ in range(3):
        b.acquire()
        b.record_failure(False, "500")
    assert b.state is BreakerState.OPEN
    clock.now += 4
    with pytest.raises(CircuitOpen) as refused:
        b.acquire()
    assert refused.value.retry_after == pytest.approx(6)
    assert "model 'm' of backend 'openai'" in refused.value.message


def test_half_open_admits_one_probe_at_a_time_and_its_success_closes() -> None:
    clock = Clock()
    b = breaker(clock, failures=1, reset_s=10)
    b.acquire()
    b.record_failure(False, "500")
    clock.now += 10
    assert b.acquire() is True  # the probe
    with pytest.raises(CircuitOpen):
        b.acquire()  # a second caller while the probe is out
    b.record_success(True)
    assert b.state is BreakerState.CLOSED
    assert b.acquire() is False


def test_a_probe_that_is_released_lets_the_next_caller_probe() -> None:
    clock = Clock()
    b = breaker(clock, failures=1, reset_s=10)
    b.record_failure(False, "500")
    clock.now += 10
    assert b.acquire() is True
    b.release(True)  # a 4xx or a cancel: neither success nor failure
    assert b.acquire() is True


def test_failed_probes_reopen_for_longer_up_to_the_cap() -> None:
    clock = Clock()
    b = breaker(clock, failures=1, reset_s=10, max_reset_s=20)
    b.record_failure(False, "500")
    open_times = []
    for _ in range(5):
        open_times.append(b.retry_after())
        clock.now += b.retry_after()
        assert b.acquire() is True
        b.record_failure(True, "500")
    assert open_times == [10, 15, 20, 20, 20]
    clock.now += 20
    b.acquire()
    b.record_success(True)  # recovered: the next outage starts from reset_s again
    b.record_failure(False, "500")
    assert b.retry_after() == 10


def test_jitter_only_shortens_the_open_time() -> None:
    clock = Clock()
    b = breaker(clock, rand=0.999, failures=1, reset_s=10)
    b.record_failure(False, "500")
    assert 9.0 <= b.retry_after() < 10


def _back_on_primary_after(
    outage_s: float, every_s: float, offset_s: float, rand: float, tries: int = 3
) -> float:
    """A provider down for `outage_s` from t=0, a request every `every_s` from
    `offset_s`, each request trying the primary up to `tries` times (its retries) while
    the breaker lets it: how long after the recovery the primary served again."""
    clock = Clock()
    start = clock.now
    b = breaker(clock, rand=rand)
    t = offset_s
    while t < 600:
        clock.now = start + t
        for _ in range(tries):
            try:
                probe = b.acquire()
            except CircuitOpen:
                break  # the fallback answers
            if t < outage_s:
                b.record_failure(probe, "503")
                continue
            b.record_success(probe)
            return t - outage_s
        t += every_s
    raise AssertionError("never back on the primary")


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
@pytest.mark.parametrize("offset_s", [0.0, 0.5, 1.0, 1.5])
def test_a_primary_down_20s_gets_traffic_back_within_15s_at_a_request_every_2s(
    offset_s: float, rand: float
) -> None:
    assert _back_on_primary_after(20, 2, offset_s, rand) <= 15


@pytest.mark.parametrize("rand", [0.0, 0.999])
@pytest.mark.parametrize("outage_s", [30, 60, 90, 300])
def test_a_long_outage_still_gets_traffic_back_within_30s_of_recovery(
    outage_s: float, rand: float
) -> None:
    for offset_s in (0.0, 1.0, 2.0, 3.0):
        assert _back_on_primary_after(outage_s, 4, offset_s, rand) <= 30


def _error(status: int) -> UpstreamHTTPError:
    return UpstreamHTTPError(status, "x", code="c", backend="openai")


def test_one_models_failures_leave_another_models_breaker_closed() -> None:
    clock = Clock()
    breakers = Breakers(
        "openai",
        BreakerConfig(failures=2),
        Metrics(),
        models=["a", "b"],
        clock=clock,
        rand=lambda: 0,
    )
    a = breakers.for_model("a")
    for _ in range(2):
        breakers.record_error(_error(500), False, a, a.acquire())
    assert a.state is BreakerState.OPEN
    assert breakers.for_model("b").state is BreakerState.CLOSED
    assert breakers.whole.state is BreakerState.CLOSED  # the backend answered each time


def test_connection_failures_count_for_the_whole_backend() -> None:
    clock = Clock()
    breakers = Breakers(
        "openai",
        BreakerConfig(failures=2),
        Metrics(),
        models=["a", "b"],
        clock=clock,
        rand=lambda: 0,
    )
    for name in ("a", "b"):
        own = breakers.for_model(name)
        refused = BackendUnreachable("refused", backend="openai")
        breakers.record_error(refused, breakers.whole.acquire(), own, own.acquire())
    assert breakers.whole.state is BreakerState.OPEN
    assert breakers.for_model("a").state is BreakerState.CLOSED


def test_unlisted_models_have_a_bounded_number_of_breakers() -> None:
    metrics = Metrics()
    breakers = Breakers(
        "openai", BreakerConfig(failures=1), metrics, models=["a"], clock=Clock(), rand=lambda: 0
    )
    for index in range(MAX_UNLISTED_MODELS + 50):
        breakers.for_model(f"free-{index}").record_failure(False, "500")
    assert len(breakers.models) == 1 + MAX_UNLISTED_MODELS
    overflow = breakers.for_model("one-more")
    assert overflow.model == "other"
    labels = {
        sample.labels["model"]
        for family in metrics.registry.collect()
        if family.name == "tollway_breaker_transitions"
        for sample in family.samples
    }
    assert labels == {"other"}  # unlisted models never name a metric label


@pytest.mark.parametrize("attempt,low,high", [(0, 0.25, 0.75), (1, 0.5, 1.5), (2, 1.0, 3.0)])
def test_backoff_grows_exponentially_with_jitter_and_never_hammers(
    attempt: int, low: float, high: float
) -> None:
    assert backoff_delay(attempt, None, lambda: 0.0) == pytest.approx(low)
    assert backoff_delay(attempt, None, lambda: 1.0) == pytest.approx(high)
    samples = {round(backoff_delay(attempt, None), 6) for _ in range(50)}
    assert len(samples) > 40 and min(samples) >= low and max(samples) <= high


def test_backoff_is_capped_and_retry_after_is_a_floor() -> None:
    assert backoff_delay(20, None, lambda: 1.0) == pytest.approx(12.0)
    assert backoff_delay(0, 2.0, lambda: 0.5) == 2.0
    assert backoff_delay(0, 0.05, lambda: 0.0) == pytest.approx(0.25)


@pytest.mark.parametrize(
    "status,reason",
    [(500, "5xx"), (501, "5xx"), (503, "5xx"), (429, "429"), (408, "408"), (409, "409"),
     (400, "4xx"), (404, "4xx"), (422, "4xx")],
)  # fmt: skip
def test_failure_reasons_name_what_a_retry_may_help(status: int, reason: str) -> None:
    assert failure_reason(_error(status)) == reason


def test_breaker_settings_have_defaults_and_name_the_key_at_fault() -> None:
    from gateway.config.reader import ConfigError
    from tests.conftest import make_config

    base = {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}
    config = make_config({"backends": {"x": base}})
    assert config.backends["x"].breaker == BreakerConfig(failures=5, reset_s=10, max_reset_s=20)
    longer = make_config({"backends": {"x": {**base, "breaker": {"reset_s": 30}}}})
    assert longer.backends["x"].breaker.max_reset_s == 30  # no growth past a longer reset
    with pytest.raises(ConfigError, match=r"backends\.x\.breaker\.max_reset_s: must be at least"):
        make_config({"backends": {"x": {**base, "breaker": {"reset_s": 5, "max_reset_s": 2}}}})
    with pytest.raises(ConfigError, match=r"backends\.x\.breaker\.max_reset_s: expected a number"):
        make_config({"backends": {"x": {**base, "breaker": {"max_reset_s": "soon"}}}})
