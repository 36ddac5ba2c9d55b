"""Unit tests: the embedded beat's heartbeat (``pulse``) and the decision that beat hangs."""

from __future__ import annotations

import os
from pathlib import Path

from pubtasks import pulse, timing
from pubtasks.celery import App
from pubtasks.pulse import Pulse, hung
from pubtasks.schedule import every
from pubtasks.settings import Settings
from tests.test_beat import Recording


def test_a_beat_is_hung_only_once_silent_for_longer_than_the_threshold() -> None:
    assert not hung(0.0)
    assert not hung(timing.HUNG_AFTER)
    assert hung(timing.HUNG_AFTER + 0.1)
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


def test_each_tick_of_beat_stamps_the_installed_pulse(tmp_path: Path) -> None:
    # Given the pulse a worker installs, on a clock of the test's
    now = [100.0]
    p = pulse.install(lambda: now[0])
    app = App("test_pulse", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {"grid": {"task": "pubtasks.publish", "schedule": every()}}
    app.use_settings(Settings(publish_interval=1.0))
    s = Recording(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        # When 30 s pass, then beat ticks
        now[0] = 130.0
        assert p.silence() == 30.0
        s.tick()
        # Then its silence is over
        assert p.silence() == 0.0
    finally:
        s.close()
        pulse._installed.clear()
