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
