"""Unit tests: the durations pubtasks relies on keep their invariants (``timing``)."""

from __future__ import annotations

import pytest

from pubtasks import timing, tries
from pubtasks.celery import celery_defaults


@pytest.mark.parametrize(("why", "holds"), timing.INVARIANTS, ids=[w for w, _ in timing.INVARIANTS])
def test_each_timing_invariant_holds(why: str, holds: bool) -> None:
    assert holds, why


def test_the_backoffs_stay_within_their_stated_maxima() -> None:
    assert max(tries.nack_backoff(a) for a in range(1, 20)) == timing.NACK_BACKOFF_MAX
    assert max(tries.return_backoff(b) for b in range(1, 20)) == timing.RETURN_BACKOFF_MAX


def test_celery_is_given_the_visibility_timeout_the_invariants_assume() -> None:
    options = celery_defaults()["broker_transport_options"]
    assert options["visibility_timeout"] == timing.VISIBILITY_TIMEOUT


@pytest.mark.parametrize(
    ("backoff", "delays"),
    [
        (timing.RECONNECT, [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]),
        (timing.REDIS_RETRY, [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]),
        (timing.NACK_BACKOFF, [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]),
        (timing.RETURN_BACKOFF, [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]),
        (timing.STATS_RETRY, [1.0] * 6),
    ],
)
def test_each_backoff_waits_as_it_says(backoff: timing.Backoff, delays: list[float]) -> None:
    assert [round(backoff.delay(n), 6) for n in range(1, 7)] == delays


def test_kombus_reconnect_is_given_the_linear_backoff_and_only_that() -> None:
    assert timing.RECONNECT.kombu() == {
        "interval_start": 0.0,
        "interval_step": 0.25,
        "interval_max": 1.0,
    }
    with pytest.raises(ValueError, match="linear"):
        timing.NACK_BACKOFF.kombu()
