"""Stops by a signal to the worker's whole process group, as systemd's default
``KillMode=control-group`` and a terminal's Ctrl-C send one: the ticks in flight are
finished and their confirms counted, and nothing is logged as lost; a second Ctrl-C is
still Celery's cold shutdown.

The end-to-end tests run the real ``celery -A pubtasks worker -B`` in a process group of
its own (``Worker``) and send the signal to that group, as a supervisor would. They
never touch RabbitMQ or Redis themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from celery import signals

from pubtasks.bench.waiting import wait_for
from pubtasks.bench.worker import STOP_TIMEOUT
from pubtasks.stats import Stats
from pubtasks.stopping import HANDOFF, STOPPING, from_main
from tests.helpers import Worker, caught_up, check, clock_of, finish, take, tally, write_config
from tests.test_faults import more_acks

#: 20 ticks a second: a stop then nearly always finds a tick in flight.
INTERVAL = 0.05
#: The signals of the stops, in turn: systemd's and ``kill -TERM -PGID``'s, then Ctrl-C's.
STOPS = (signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGTERM, signal.SIGTERM)
#: Celery's warm shutdown exits 0 after SIGTERM, and 1 (EX_FAILURE) after Ctrl-C.
EXIT_STATUS = {signal.SIGTERM: 0, signal.SIGINT: 1}


def stop_group(worker: Worker, sig: signal.Signals) -> int:
    """Send ``sig`` to the worker's whole process group; its exit status once the main
    process has exited (the group's other processes with it)."""
    assert worker.proc is not None
    proc = worker.proc
    worker.last_stop = time.time()  # the run's own clock (the ledger's Clock)
    os.killpg(proc.pid, sig)
    wait_for(lambda: proc.poll() is not None, STOP_TIMEOUT, f"the worker to exit on {sig.name}")
    return int(proc.returncode)


@pytest.mark.parametrize(
    ("sender", "obeyed"),
    [(100, True), (7, False), (1, False), (200, True)],
    ids=["the main process", "anybody else", "init", "itself"],
)
def test_a_child_obeys_a_sigterm_from_the_worker_s_main_process_only(
    sender: int, obeyed: bool
) -> None:
    # A child (pid 200) of the worker's main process (pid 100)
    assert from_main(sender, main=100, me=200, parent_now=100) is obeyed
    # ... and, once its main process is gone, anybody's
    assert from_main(sender, main=100, me=200, parent_now=1)


def test_beat_holds_the_hand_over_while_it_numbers_and_sends_a_tick() -> None:
    assert HANDOFF in STOPPING  # a SIGTERM handed over cannot cut a tick's send short


#: A child of this script holds SIGTERM as a pool process does; the script signals it
#: when the test writes a line.
CHILD = """
import logging, os, signal, sys, time
from pubtasks.stopping import hand_over, hold_foreign_sigterm
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
child = os.fork()
if child == 0:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # sent if stopped when orphaned
    assert hold_foreign_sigterm("test child", hand_over)
    print("held", flush=True)
    while True:
        time.sleep(0.05)
print(child, flush=True)
sys.stdin.readline()
os.kill(child, signal.SIGTERM)
print(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)
"""


NO_HOLD = pytest.mark.skipif(
    not hasattr(signal, "sigtimedwait"), reason="no sigtimedwait: nothing held"
)


@NO_HOLD
def test_a_held_sigterm_from_another_process_is_left_and_one_from_the_parent_obeyed() -> None:
    with subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdin is not None and parent.stdout is not None
        lines = [parent.stdout.readline(), parent.stdout.readline()]
        child = int(next(line for line in lines if line.strip().isdigit()))
        assert "held\n" in lines
        # When another process (this test) sends the child SIGTERM, it stays alive
        os.kill(child, signal.SIGTERM)
        left = parent.stdout.readline()
        assert f"test child (pid {child}): SIGTERM from pid {os.getpid()} is left" in left
        assert Path(f"/proc/{child}").exists()
        # ... and when its parent sends one, it dies of it, as if it had not been held
        parent.stdin.write("\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == str(-signal.SIGTERM)
        assert parent.wait(10) == 0


#: As CHILD, but the script exits, without waiting for its child, at the next line.
ORPHAN = CHILD.replace(
    "print(os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]), flush=True)",
    "print('sent', flush=True); sys.stdin.readline()",
)


def states(pid: int) -> set[str]:
    """The states of process ``pid``'s threads (R, S, T: stopped, Z: zombie); none once
    it is gone."""
    found = set()
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            found.add(stat.read_text().rsplit(")", 1)[1].split()[0])
        except OSError:
            continue
    return found


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie nobody reaps counts)."""
    return states(pid) <= {"Z"}


@NO_HOLD
def test_a_child_whose_parent_s_sigterm_was_merged_into_another_stops_once_its_parent_is_gone() -> (
    None
):
    with subprocess.Popen(
        [sys.executable, "-c", ORPHAN],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as parent:
        assert parent.stdin is not None and parent.stdout is not None
        lines = [parent.stdout.readline(), parent.stdout.readline()]
        child = int(next(line for line in lines if line.strip().isdigit()))
        try:
            # When a SIGTERM from another process is still pending in the child as its
            # parent sends one (the kernel keeps one: the parent's is lost)
            os.kill(child, signal.SIGSTOP)
            wait_for(lambda: states(child) == {"T"}, 5, "the child to be stopped")
            os.kill(child, signal.SIGTERM)
            parent.stdin.write("\n")
            parent.stdin.flush()
            assert parent.stdout.readline() == "sent\n"
            os.kill(child, signal.SIGCONT)
            # Then the child leaves the one it got...
            assert f"SIGTERM from pid {os.getpid()} is left" in parent.stdout.readline()
            assert not gone(child)
            # ... and once its parent exits, it sees it gone and stops
            parent.stdin.write("\n")
            parent.stdin.flush()
            assert parent.wait(10) == 0
            wait_for(lambda: gone(child), 10, "the orphaned child to stop")
            assert "is gone; stopping" in parent.stdout.readline()
        finally:
            if not gone(child):
                os.kill(child, signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.e2e
@pytest.mark.faults
def test_stops_by_a_signal_to_the_whole_group_finish_the_ticks_in_flight(
    worker: Worker, stats: Stats, amqp_url: str
) -> None:
    # Given the real worker with beat at 20 ticks a second
    worker.env["PUBLISH_INTERVAL"] = str(INTERVAL)
    codes = []
    for sig in STOPS:
        worker.start()
        more_acks(stats, 20, 60, f"before {sig.name}")
        # (once beat has sent the ticks it missed while the worker was down: a stop in
        # mid catch-up leaves the rest to the next start, and the last stop has none)
        wait_for(lambda: caught_up(stats), 60, f"beat to catch up before {sig.name}", 0.05)
        # When its whole process group gets SIGTERM (or SIGINT) mid-run
        codes.append(stop_group(worker, sig))
        # (and a supervisor starts it again: the next round)
    # Then each stop was Celery's warm shutdown...
    assert codes == [EXIT_STATUS[s] for s in STOPS], worker.log[-5000:]
    log = worker.log
    assert "Traceback" not in log, log
    assert "WorkerLostError" not in log, log
    assert "during closing channel" not in log, log  # a confirm dropped on the floor
    assert "died" not in log, log  # the supervisor did not take beat's stop for a death
    assert "SIGTERM from pid" in log  # the pool's processes and beat got it, and left it
    # ... and once what was still queued is published, RabbitMQ holds exactly what Redis
    # counted acked: each tick in flight was finished and its confirm counted, once
    queued = finish(worker.cwd, worker.env, stats)
    received = take(amqp_url, "text")
    t = stats.snapshot().totals
    # (A copy of a tick, same message_id, is counted as it is published: a tick whose
    # result billiard held through a 30 s stop can be sent again by the supervisor's
    # reconcile, and both copies published. The row records such duplicates.)
    ids = [m.properties["message_id"] for m in received]
    assert (t.acked, t.nacked, t.unconfirmed, t.pending, t.failed) == (len(ids), 0, 0, 0, 0)
    assert t.published == t.acked and t.invariant_holds
    # ... and every grid point due over the run's own clock has its tick, matched one by
    # one against what RabbitMQ received (none failed, none skipped)
    row = tally(
        f"{len(STOPS)} stops by a signal to the whole process group at 20 ticks/s",
        amqp_url, stats, clock_of(worker), None, "SIGTERM x4, SIGINT x1; restarted after each",
        queued, interval=INTERVAL, received=received,
    )  # fmt: skip
    check(row)


#: A payload that keeps its pool process busy for two minutes, and says when it began.
SLOW = """
import pathlib
import time


def slow(**_):
    pathlib.Path("running").touch()  # in the worker's directory
    try:
        time.sleep(120)
    finally:  # ended by SystemExit (a SIGTERM's, in a pool process), not by SIGKILL
        pathlib.Path("ended").touch()
    return {}
"""


@pytest.mark.integration
@pytest.mark.e2e
@pytest.mark.faults
def test_a_second_ctrl_c_is_still_a_cold_shutdown_that_ends_the_running_ticks(
    worker: Worker, prefix: str
) -> None:
    # Given a worker whose ticks are running, each for two minutes
    (worker.cwd / "slowpayload.py").write_text(SLOW)
    write_config(
        worker.cwd,
        prefix,
        """
        beat_schedule = {"publish-text": {
            "task": "pubtasks.publish", "schedule": every(),
            "kwargs": {"payload": "slowpayload:slow"},
        }}
        """,
    )
    worker.start()
    wait_for((worker.cwd / "running").exists, 60, "a tick to be running")
    assert worker.proc is not None
    proc = worker.proc
    # When Ctrl-C reaches the whole group, the warm shutdown waits for the ticks...
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(lambda: "Hitting Ctrl+C again" in worker.log, 10, "the warm shutdown")
    assert proc.poll() is None
    # ... and a second Ctrl-C is Celery's cold shutdown: the running ticks are ended
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(lambda: proc.poll() is not None, 60, "the cold shutdown")  # not the 2 minutes
    assert "terminate all running tasks" in worker.log
    assert (worker.cwd / "ended").exists(), "the pool process did not act on the SIGTERM"


def test_a_worker_s_main_process_keeps_taking_sigterm_itself() -> None:
    # The solo pool (and Celery's in-process test worker) sends worker_process_init in
    # the worker's main process: there SIGTERM must stay its own, and the processes it
    # starts must not inherit it blocked (they would never see a warm shutdown's signal)
    signals.worker_process_init.send(sender="solo@test")
    held = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # (as it was, whatever)
    assert signal.SIGTERM not in held
