"""A hung embedded beat (alive, but not ticking) is handled as a dead one: the worker
kills it and exits 3, and a restart goes on firing ticks.

Drives the real ``celery -A pubtasks worker -B``; the test plays the supervisor.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from pubtasks import timing
from pubtasks.bench.waiting import wait_for
from pubtasks.stats import Stats
from pubtasks.supervision import EXIT_BEAT_DIED
from tests.helpers import Worker, beat_pid, caught_up, check, clock_of, finish, tally
from tests.test_crashes import ticking_again
from tests.test_faults import INTERVAL, more_acks

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]


def test_a_stopped_beat_is_killed_its_worker_exits_3_and_a_restart_goes_on(
    worker: Worker, stats: Stats, amqp_url: str
) -> None:
    # Given one worker with embedded beat, publishing every 0.2 s
    worker.start()
    more_acks(stats, 3, 30, "start")
    pid = beat_pid(worker)
    # When its beat is stopped (SIGSTOP): alive, but it fires nothing
    os.kill(pid, signal.SIGSTOP)
    stopped_at = time.time()
    before = stats.snapshot().last_message_number
    try:
        # Then the worker kills it and stops with exit status 3 (bounded generously here;
        # the time it took is recorded)
        assert worker.proc is not None
        proc = worker.proc
        wait_for(
            lambda: proc.poll() is not None, timing.HUNG_AFTER + 40, "the worker to exit", 0.05
        )
        exited = time.time() - stopped_at
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever happened, no stopped beat
            os.kill(pid, signal.SIGKILL)
    assert proc.returncode == EXIT_BEAT_DIED, worker.log[-3000:]
    assert f"the embedded beat (pid {pid}) is hung: no heartbeat for" in worker.log
    assert worker.log.count("is hung") == 1
    # ... and once its supervisor starts it again, ticks flow again
    worker.start()
    # (ticks fired by the beat started since: the ones it catches up after it takes the
    # lock the hung one never released, and on)
    recovery = ticking_again(stats, before) - stopped_at
    wait_for(lambda: caught_up(stats), 60, "beat to catch up", 0.05)
    assert worker.stop() == 0
    queued = finish(worker.cwd, worker.env, stats)
    row = tally(
        "beat process stopped (SIGSTOP), one worker: it is killed, the worker exits 3 "
        "and is restarted",
        amqp_url, stats, clock_of(worker), recovery,
        f"the worker exited 3 {exited:.1f} s after the stop (hung after {timing.HUNG_AFTER:g} s "
        "of silence)", queued, interval=INTERVAL,
    )  # fmt: skip
    check(row)
