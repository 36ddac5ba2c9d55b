"""`pubtasks bench` runs, end to end, on a small scale (the real figures: scripts/performance)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pubtasks.bench import burst, bursts
from pubtasks.bench.fidelity import grid_fidelity, timedelta_drift


@pytest.mark.integration
def test_bench_json_carries_every_rate(amqp_url: str, redis_url: str) -> None:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("pubtasks")), "bench", "--json",
         "--messages", "300", "--rounds", "2", "--tick-seconds", "0"],
        env={"AMQP_URL": amqp_url, "REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    got = json.loads(out.stdout)
    for key in (
        "pika_msgs_per_s",
        "kombu_confirm_msgs_per_s",
        "pubtasks_batch_msgs_per_s",
        "pubtasks_public_msgs_per_s",
    ):
        assert got[key] > 0, key
    assert got["pubtasks_batch_counted"] == {
        "published": 300,
        "acked": 300,
        "invariant_holds": True,
    }
    assert got["pubtasks_batch_exact_every_round"] and got["pubtasks_public_exact_every_round"]
    assert [len(runs) for runs in got["rounds"].values()] == [2] * 5
    # pika with properties of 64 and 96 bytes; the tick's longest message_id: ".299"
    assert set(got["properties_msgs_per_s"]) == {"64", "96"}
    assert got["properties_bytes"] == 38 + len("publish-text@1795708650500.299")
    assert "ticks" not in got  # no worker run, and never a broker restart unless asked
    ratio = got["pubtasks_batch_msgs_per_s"] / got["pika_msgs_per_s"]
    assert got["pubtasks_vs_pika"] == pytest.approx(ratio, abs=0.01)


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([10.0, 10.1, 10.2, 10.3], {"expected": 4, "delivered": 4, "missed": 0, "extra": 0}),
        ([10.0, 10.1, 10.3], {"expected": 4, "delivered": 3, "missed": 1, "extra": 0}),
        ([9.9, 10.0, 10.1, 10.2, 10.3], {"expected": 5, "delivered": 5, "missed": 0, "extra": 1}),
        ([10.0, 10.1, 10.1, 10.2, 10.3], {"expected": 4, "delivered": 5, "missed": 0, "extra": 1}),
    ],
)
def test_grid_fidelity(times: list[float], expected: dict[str, int]) -> None:
    got = grid_fidelity(times, 0.1, spawned=9.95, stopped=10.3)
    assert (got["expected"], got["delivered"], got["missed"], got["extra_at_startup"]) == (
        expected["expected"],
        expected["delivered"],
        expected["missed"],
        expected["extra"],
    )
    assert got["max_drift_ms"] < 1e-6


def test_timedelta_drift_measures_how_far_ticks_fall_behind() -> None:
    got = timedelta_drift([0.0, 0.1002, 0.2004, 0.3006], 0.1)
    assert got["drift_ms_total"] == pytest.approx(0.6)
    assert got["drift_ms_per_tick"] == pytest.approx(0.2)


def test_a_burst_is_judged_by_when_its_messages_reached_the_queue() -> None:
    from pubtasks.bench.burst import Arrivals, judge  # noqa: PLC0415

    arrivals = Arrivals.__new__(Arrivals)
    arrivals.at = {
        "e00000@1000000": 1000.05, "e00001@1000000": 1000.30,  # burst 1: both, last 0.3 s
        "e00000@1010000": 1010.10,  # burst 2: one of two
        "e00000@1020000": 1020.0,  # after the measured bursts: not judged
    }  # fmt: skip
    got = judge(arrivals, [1000.0, 1010.0], entries=2)
    assert got["expected"] == 4 and got["delivered"] == 3
    assert got["delivered_per_burst"] == [2, 1]
    assert got["last_lateness_s"] == [0.3, 0.1]
    assert got["p50_s"] == 0.1


@pytest.mark.integration
def test_bench_entries_runs_the_burst_scenario(amqp_url: str, redis_url: str) -> None:
    out = subprocess.run(
        [str(Path(sys.executable).with_name("pubtasks")), "bench", "--json",
         "--entries", "40", "--period", "2", "--bursts", "2", "--messages", "300"],
        env={"AMQP_URL": amqp_url, "REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=180, check=True,
    )  # fmt: skip
    burst = json.loads(out.stdout)["burst"]
    # Every tick of both bursts reached the queue, and pubtasks counted what it got
    assert burst["delivered"] == burst["expected"] == 80
    assert burst["counters_equal_received"] is True
    assert burst["raw_confirmed_msgs_per_s"] > 0
    assert all(x is not None for x in burst["last_lateness_s"])


def test_the_bursts_section_sets_each_case_before_beside_after(tmp_path: Path) -> None:
    row = {
        "entries": 1000, "period": 10.0, "delivered": 3000, "expected": 3000,
        "last_lateness_s": [0.4, 0.5], "p50_s": 0.3, "p99_s": 0.49,
        "burst_msgs_per_s": 2000, "raw_confirmed_msgs_per_s": 8000,
        "counters_equal_received": True, "beat_start_s": 1.1, "rss_mib": 210.0,
        "stats_s": 0.9, "list_s": 0.7,
    }  # fmt: skip
    old = {**row, "last_lateness_s": [9.3, None], "delivered": 2000}
    page, before, after = tmp_path / "performance.md", tmp_path / "b.json", tmp_path / "a.json"
    page.write_text("# Performance\n\nthe rest\n")
    before.write_text(json.dumps({"rev": "abc123", "rows": [old]}))
    after.write_text(json.dumps({"rows": [row]}))
    bursts.render(page, before, after)
    bursts.render(page, before, after)  # again: the section is replaced, not added
    text = page.read_text()
    assert text.count(bursts.BEGIN) == 1 and text.startswith("# Performance\n\nthe rest\n")
    assert "| 1,000 | 10 s | before | 2000 / 3000 | 9.3 s, - |" in text
    assert (
        "| 1,000 | 10 s | after | 3000 / 3000 | 0.4 s, 0.5 s | 0.3 s | 0.49 s | 2000 | 8000 | yes |"
        in text
    )
    assert "on commit abc123" in text


def test_beat_start_is_read_from_the_worker_log() -> None:
    spawned = time.mktime(time.strptime("2026-12-03 21:04:14", "%Y-%m-%d %H:%M:%S")) + 0.5
    log = (
        "[2026-12-03 21:04:15,901: INFO/Beat] beat: Starting...\n"
        "[2026-12-03 21:04:17,506: INFO/Beat] beat: going on with 10001 entries (read ...)\n"
    )
    assert burst.beat_start(log, spawned) == 3.01
    assert burst.beat_start("nothing yet\n", spawned) is None
