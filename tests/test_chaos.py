"""Unit tests: the chaos run's verdict and its bookkeeping of worker exits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pubtasks.bench.worker import Worker
from tests.support.chaos import CAUSED, Supervisor, beat_of, verdict


def result(**changes: Any) -> dict[str, Any]:
    clean: dict[str, Any] = {
        "stranded": 0,
        "exits": [{"worker": "a", "code": 3, "caused": True}],
        "stop_codes": [0, 0],
        "invariant": True,
        "mend_errors": [],
    }
    return {**clean, **changes}


def test_a_clean_run_has_nothing_wrong() -> None:
    assert verdict(result()) == []


def test_a_worker_exit_no_fault_explains_is_wrong() -> None:
    exits = [{"worker": "b", "code": 1, "caused": False}]
    assert verdict(result(exits=exits)) == ["1 worker exit(s) no fault explains: b exited 1"]


def test_an_unclean_stop_a_stranded_tick_a_broken_invariant_are_wrong() -> None:
    wrong = verdict(result(stop_codes=[0, -9], stranded=2, invariant=False))
    assert len(wrong) == 3


def test_a_beat_kill_explains_exit_3_and_nothing_else(tmp_path: Path) -> None:
    w = Worker(tmp_path, {})
    s = Supervisor([w])
    s.expect(w, "beat_kill")
    assert s.caused == {tmp_path.name: {3}}
    assert CAUSED == {"beat_kill": 3, "worker_kill": -9, "worker_term": 0}


def test_a_pool_kill_explains_exit_1_only_when_the_log_says_the_pool_did_not_start(
    tmp_path: Path,
) -> None:
    w = Worker(tmp_path, {})
    s = Supervisor([w])
    w.log_path.write_text(
        "CRITICAL/MainProcess] Unrecoverable error: WorkerLostError('Could not start worker "
        "processes')\n"
    )
    s.expect(w, "pool_kill")
    assert s.explained(w, 1)
    assert not s.explained(w, 1)  # one kill explains one exit
    s.expect(w, "pool_kill")
    assert not s.explained(w, 2)
    w.log_path.write_text("ready.\nsomething else went wrong\n")
    s.expect(w, "pool_kill")
    assert not s.explained(w, 1)


def test_the_current_log_is_what_the_worker_wrote_since_its_last_start(tmp_path: Path) -> None:
    w = Worker(tmp_path, {})
    w.log_path.write_text("watching the embedded beat (pid 41)\n")
    w._started_at = w.log_path.stat().st_size  # as start() does
    assert w.current_log == ""
    assert beat_of(w) is None  # the beat of the run before is gone
    with w.log_path.open("a") as log:
        log.write("watching the embedded beat (pid 42)\n")
    assert w.current_log == "watching the embedded beat (pid 42)\n"
    assert beat_of(w) == 42


def test_a_sigterm_before_the_worker_is_ready_may_also_explain_death_by_sigterm(
    tmp_path: Path,
) -> None:
    w = Worker(tmp_path, {})
    s = Supervisor([w])
    s.expect(w, "worker_term")  # nothing logged yet: Celery's handler may not be in place
    assert s.caused == {tmp_path.name: {0, -15}}
    assert s.explained(w, -15)
    w.log_path.write_text("[...] chaos-a@vm ready.\n")
    s.expect(w, "worker_term")  # once ready, only the warm shutdown's 0
    assert s.caused == {tmp_path.name: {0}}
    assert not s.explained(w, -15)
