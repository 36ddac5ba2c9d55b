"""An entry's limits and run-time recipes: pure, with fixed clocks."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from pubtasks.bounds import Bounded, check_limits, crontab_of, entry_grid, limits_of, offset_ms
from pubtasks.cron import Cron
from pubtasks.errors import ConfigError
from pubtasks.runtime import merged, recipe, resolved
from pubtasks.schedule import NEVER_US, US, every, has_next, once, to_us
from pubtasks.specs import entry_of, pairs, parse_value, spec_of

T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC).timestamp()


def ticks(grid: object, after: float, n: int) -> list[float]:
    out, t = [], to_us(after)
    for _ in range(n):
        t = grid.following_us(t)  # type: ignore[attr-defined]
        if not has_next(t):
            break
        out.append(t / US)
    return out


def test_once_fires_once_at_its_time_and_never_after() -> None:
    grid = once("2026-12-03T12:00:00+01:00")
    assert grid.at == T0 - 3600
    assert ticks(grid, T0 - 7200, 3) == [T0 - 3600]
    assert grid.following_us(to_us(T0 - 3600)) == NEVER_US
    assert pickle.loads(pickle.dumps(grid)) == grid


def test_once_refuses_a_time_without_a_zone() -> None:
    with pytest.raises(ValueError, match="has no time zone"):
        once("2026-12-03T12:00:00")


def test_jitter_is_deterministic_within_its_span_and_keeps_the_ticks_in_order() -> None:
    grid = Bounded(every(10.0), "nightly", jitter=4.0)
    got = ticks(grid, T0, 50)
    # the same in another beat (another instance), and each within [0, 4) s of its point
    assert ticks(Bounded(every(10.0), "nightly", jitter=4.0), T0, 50) == got
    points = [T0 + 10 * i for i in range(50)]  # T0 itself is a point: jittered, after T0
    offsets = [round(t - p, 3) for t, p in zip(got, points, strict=True)]
    assert all(0 <= o < 4 for o in offsets)
    assert len(set(offsets)) > 10  # spread, not one offset
    assert got == sorted(got)
    # whole milliseconds, so the message_id (ms) names the tick exactly
    assert all(to_us(t) % 1000 == 0 for t in got)
    # another entry's ticks move differently
    assert ticks(Bounded(every(10.0), "other", jitter=4.0), T0, 50) != got
    assert offset_ms("nightly", to_us(points[0]), 4.0) == round((got[0] - points[0]) * 1000)


def test_a_tick_just_before_a_jittered_time_finds_that_time() -> None:
    grid = Bounded(every(10.0), "e", jitter=9.0)
    [first] = ticks(grid, T0, 1)
    assert ticks(grid, first - 0.001, 1) == [first]
    assert ticks(grid, first, 1)[0] > first


def test_start_and_end_bound_the_ticks() -> None:
    grid = Bounded(every(10.0), "e", start=T0 + 25, end=T0 + 60)
    assert ticks(grid, T0, 10) == [T0 + 30, T0 + 40, T0 + 50, T0 + 60]
    assert grid.following_us(to_us(T0 + 60)) == NEVER_US


def test_limits_of_options_and_a_one_off_runs_once() -> None:
    options = {"start": "2026-12-03T12:00:00Z", "max_runs": 3, "jitter": 2, "overlap": "skip"}
    limits = limits_of(options)
    assert (limits.start, limits.max_runs, limits.jitter, limits.overlap) == (T0, 3, 2.0, "skip")
    assert limits_of({}, once(T0)).max_runs == 1
    assert limits_of({}, Bounded(once(T0), "e", jitter=1)).max_runs == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"jitter": 10}, "'jitter' 10 s is not shorter than the 10 s between two of its ticks"),
        ({"jitter": -1}, "'jitter' -1 is not a number of seconds"),
        ({"max_runs": 0}, "'max_runs' 0 is not a positive integer"),
        ({"overlap": "queue"}, "'overlap' is 'queue'; give 'allow'"),
        ({"start": "2026-12-03T12:00:00"}, "'start': 2026-12-03T12:00:00 has no time zone"),
        ({"start": "T0+2", "end": "T0"}, "'end' is before 'start'"),
    ],
)
def test_bad_limits_are_one_line_naming_the_entry_and_the_option(
    options: dict[str, object], message: str
) -> None:
    fixed = {
        k: {"T0": "2026-12-03T12:00:00Z", "T0+2": "2026-12-03T12:00:02Z"}.get(v, v)  # type: ignore[call-overload]
        for k, v in options.items()
    }
    with pytest.raises(ConfigError) as caught:
        check_limits("e", fixed, every(10.0), T0)
    assert str(caught.value).startswith("beat_schedule entry 'e': options: ")
    assert message in str(caught.value)


def test_jitter_of_a_crontab_is_checked_against_its_shortest_gap() -> None:
    cron = Cron(crontab_of("0,10 * * * *"), UTC)
    check_limits("e", {"jitter": 599}, cron, T0)
    with pytest.raises(ConfigError, match="the 600 s between two"):
        check_limits("e", {"jitter": 600}, cron, T0)


def test_limits_on_a_schedule_celery_catches_up_itself_are_refused() -> None:
    with pytest.raises(ConfigError, match="'max_runs' applies to every\\(\\), crontab\\(\\)"):
        check_limits("e", {"max_runs": 2}, None, T0)


def test_crontab_of_cron_fields_in_crons_order() -> None:
    spec = crontab_of("30 2 1 3 *")
    assert (spec.minute, spec.hour, spec.day_of_month, spec.month_of_year) == (
        {30},
        {2},
        {1},
        {3},
    )
    with pytest.raises(ValueError, match="not five cron fields"):
        crontab_of("* * *")
    with pytest.raises(ValueError, match="'61 \\* \\* \\* \\*'"):
        crontab_of("61 * * * *")


def test_a_run_time_cron_in_its_zone_fires_each_local_time_once_across_dst() -> None:
    # 02:30 every day in Berlin: on 29 March 2026 02:30 does not exist (fires at the jump,
    # 03:00 CEST), on 25 October it happens twice (fires once, the first)
    entry = entry_of("dst", {"schedule": {"cron": "30 2 * * *"}, "timezone": "Europe/Berlin"}, UTC)
    grid = entry_grid("dst", entry, 1.0, UTC)
    assert isinstance(entry["schedule"], Cron)
    berlin = ZoneInfo("Europe/Berlin")
    spring = ticks(grid, datetime(2026, 3, 27, tzinfo=UTC).timestamp(), 3)
    assert [datetime.fromtimestamp(t, berlin).strftime("%d %H:%M %Z") for t in spring] == [
        "27 02:30 CET",
        "28 02:30 CET",
        "29 03:00 CEST",
    ]
    autumn = ticks(grid, datetime(2026, 10, 24, tzinfo=UTC).timestamp(), 3)
    assert [datetime.fromtimestamp(t, berlin).strftime("%d %H:%M %Z") for t in autumn] == [
        "24 02:30 CEST",
        "25 02:30 CEST",
        "26 02:30 CET",
    ]


def test_entry_of_makes_a_beat_schedule_entry_of_each_kind() -> None:
    every_ = entry_of("a", {"schedule": {"every": 5}, "kwargs": {"routing_key": "k"}}, UTC)
    assert every_["schedule"] == every(5.0) and every_["kwargs"] == {"routing_key": "k"}
    at = entry_of("b", {"schedule": {"at": "2026-12-03T12:00:00"}, "timezone": "Asia/Tokyo"}, UTC)
    assert at["schedule"] == once(T0 - 9 * 3600)
    cron = entry_of("c", {"schedule": {"cron": "*/5 * * * *"}}, UTC)
    assert str(cron["schedule"].minute) == str(crontab_of("*/5 * * * *").minute)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"schedule": {"every": 0}}, "'schedule': every 0 is not a positive number"),
        ({"schedule": {"hourly": 1}}, "'schedule' must be one of"),
        ({"schedule": {"every": 1}, "task": "x"}, "'task' is not part of a recipe"),
        ({"schedule": {"cron": "0 3 * *"}}, "not five cron fields"),
        ({"schedule": {"every": 1}, "timezone": "Mars/Olympus"}, "not an IANA time zone"),
        ({"schedule": {"every": 1}, "kwargs": []}, "'kwargs' must be a dict"),
    ],
)
def test_a_bad_recipe_is_one_line(spec: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        entry_of("e", spec, UTC)
    assert str(caught.value).startswith("beat_schedule entry 'e': ")
    assert message in str(caught.value)


def test_header_and_property_values_are_json_when_they_parse_as_json() -> None:
    assert parse_value("7") == 7
    assert parse_value('{"a": [1, true]}') == {"a": [1, True]}
    assert parse_value("abc") == "abc"
    assert parse_value('"7"') == "7"
    assert pairs("--header", ["x=1", "y=a=b", "z="]) == {"x": 1, "y": "a=b", "z": ""}
    with pytest.raises(ConfigError, match="--header 'x' is not KEY=VALUE"):
        pairs("--header", ["x"])


def test_an_edit_lays_what_it_gives_over_the_recipe() -> None:
    base = recipe(every=5, routing_key="a", body={"x": 1}, headers={"h": 1}, max_runs=3)
    change = recipe(routing_key="b", payload="m:f", jitter=1)
    out = merged(base, change)
    assert out["schedule"] == {"every": 5}
    assert out["kwargs"] == {"routing_key": "b", "payload": "m:f", "headers": {"h": 1}}
    assert out["options"] == {"max_runs": 3, "jitter": 1}
    assert merged(out, recipe(cron="0 3 * * *"))["schedule"] == {"cron": "0 3 * * *"}
    with pytest.raises(ConfigError, match="one of --every, --cron and --at"):
        recipe(every=5, cron="* * * * *")


def test_times_without_an_offset_are_in_the_recipes_zone() -> None:
    spec = recipe(at="2026-12-03T13:00:00", timezone="Europe/Paris", start="2026-12-03T12:00:00")
    out = resolved(spec, UTC)
    assert out["schedule"] == {"at": "2026-12-03T12:00:00+00:00"}
    assert out["options"]["start"] == "2026-12-03T11:00:00+00:00"
    with pytest.raises(ConfigError, match="--at: 'noon' is not an ISO-8601 time"):
        resolved(recipe(at="noon"), UTC)


def test_a_config_entry_is_written_as_a_recipe_for_export() -> None:
    out = spec_of(
        {"schedule": every(), "kwargs": {"routing_key": "k"}, "options": {"max_runs": 2}},
        2.0,
        UTC,
    )
    assert out == {
        "schedule": {"every": 2.0},
        "kwargs": {"routing_key": "k"},
        "options": {"max_runs": 2},
    }
    cron = spec_of({"schedule": Cron(crontab_of("0 3 * * *"), ZoneInfo("Asia/Tokyo"))}, 1.0, UTC)
    assert cron["schedule"] == {"cron": "0 3 * * *"} and cron["timezone"] == "Asia/Tokyo"
