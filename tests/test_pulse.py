"""Unit tests: the embedded beat's heartbeat (``pulse``) and the decision that beat hangs."""

from __future__ import annotations

import os

from pubtasks.pulse import HUNG_AFTER, Pulse, hung


def test_a_beat_is_hung_only_once_silent_for_longer_than_the_threshold() -> None:
    assert not hung(0.0)
    assert not hung(HUNG_AFTER)
    assert hung(HUNG_AFTER + 0.1)
    assert hung(5.1, after=5.0) and not hung(4.9, after=5.0)


def test_the_silence_counts_from_the_last_stamp() -> None:
    now = [100.0]
    p = Pulse(lambda: now[0])
    now[0] = 112.5
    assert p.silence() == 12.5
    p.stamp()
    now[0] = 113.0
    assert p.silence() == 0.5


def test_a_forked_process_stamps_the_pulse_its_parent_reads() -> None:
    # Given a pulse made before a fork, as the worker makes it before Celery forks beat
    p = Pulse(lambda: 100.0)
    pid = os.fork()
    if pid == 0:  # the child: Celery closes its descriptors, then beat stamps
        try:
            os.closerange(3, 4096)
            p._clock = lambda: 1000.0
            p.stamp()
        finally:
            os._exit(0)
    # When the child has stamped and exited
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # Then the parent reads the child's stamp
    p._clock = lambda: 1001.0
    assert p.silence() == 1.0
