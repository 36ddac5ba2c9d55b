"""Run-time entries in the real Redis: the catalog's atomic changes, the Python API, and
what numbering a tick checks (the entry's version, max_runs, overlap)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from pubtasks.catalog import Catalog, Change, Stored
from pubtasks.celery import App
from pubtasks.errors import ConfigError
from pubtasks.ids import message_id
from pubtasks.runtime import Schedules, recipe
from pubtasks.schedule import every
from pubtasks.settings import Settings
from pubtasks.stats import NotFired, Stats

pytestmark = pytest.mark.integration


@pytest.fixture
def schedules(settings: Settings, stats: Stats) -> Iterator[Schedules]:
    app = App("test_catalog", set_as_current=False, broker="memory://")
    app.conf.beat_schedule = {"from-file": {"task": "pubtasks.publish", "schedule": every(5)}}
    app.use_settings(settings)
    yield Schedules(app, stats)


def spec(**given: Any) -> dict[str, Any]:
    return recipe(**({"every": 1.0} | given))


def test_a_change_is_all_or_nothing_and_bumps_the_version(stats: Stats) -> None:
    catalog = Catalog(stats)
    now = time.time()
    v1 = catalog.change([Change("add", "a", Stored(spec(), now, now))], now)
    # an apply that adds b but also adds a again: refused whole, b not stored
    with pytest.raises(ConfigError, match="run-time entry 'a' exists"):
        catalog.change(
            [
                Change("add", "b", Stored(spec(), now, now)),
                Change("add", "a", Stored(spec(), now, now)),
            ],
            now,
        )
    loaded = catalog.load()
    assert (loaded.version, list(loaded.entries)) == (v1, ["a"])
    rev = loaded.entries["a"].rev
    # an edit made from a version someone else changed meanwhile is refused
    v2 = catalog.change([Change("edit", "a", Stored(spec(every=2.0), now, now), rev)], now)
    with pytest.raises(ConfigError, match="changed by someone else meanwhile"):
        catalog.change([Change("edit", "a", Stored(spec(every=3.0), now, now), rev)], now)
    with pytest.raises(ConfigError, match="there is no run-time entry 'zz'"):
        catalog.change([Change("remove", "zz", None, "1")], now)
    catalog.change([Change("remove", "a", None, str(v2))], now + 1)
    assert catalog.load().entries == {}
    gone = catalog.removed("a")
    assert gone is not None and gone[0].spec["schedule"] == {"every": 2.0} and gone[1] == now + 1


def test_the_python_api_adds_edits_and_removes_checked_as_config_entries_are(
    schedules: Schedules, stats: Stats
) -> None:
    schedules.add("api", recipe(every=2.0, routing_key="a.b", body={"n": 1}, max_runs=3))
    schedules.edit("api", recipe(routing_key="a.c"))
    stored = schedules.get("api")
    assert stored is not None
    assert stored.spec["kwargs"] == {"routing_key": "a.c", "body": {"n": 1}}
    assert stored.spec["options"] == {"max_runs": 3}
    # refused, with the config's own messages, and nothing stored
    add, edit = schedules.add, schedules.edit
    refusals = {
        "bad-exchange": (
            lambda: add("bad", recipe(every=1.0, exchange="nope")),
            "beat_schedule entry 'bad': exchange 'nope' is not declared",
        ),
        "bad-property": (
            lambda: add("bad", recipe(every=1.0, properties={"priority": 300})),
            "'priority' 300 is out of range",
        ),
        "config-name": (
            lambda: add("from-file", recipe(every=1.0)),
            "'from-file' is an entry of beat_schedule in celeryconfig.py",
        ),
        "edit-config": (
            lambda: edit("from-file", recipe(every=1.0)),
            "'from-file' comes from celeryconfig.py; change it in the file",
        ),
        "past": (
            lambda: add("bad", recipe(at="2020-01-01T00:00:00Z")),
            "is in the past; give a time to come",
        ),
        "jitter": (
            lambda: add("bad", recipe(every=1.0, jitter=1.0)),
            "'jitter' 1 s is not shorter than the 1 s",
        ),
    }
    for name, (call, message) in refusals.items():
        with pytest.raises(ConfigError) as caught:
            call()
        assert message in str(caught.value), name
    assert list(schedules.load().entries) == ["api"]
    schedules.remove("api")
    assert schedules.load().entries == {}


def test_apply_adds_changes_and_removes_and_export_round_trips(schedules: Schedules) -> None:
    schedules.add("keep", spec(routing_key="k"))
    schedules.add("change", spec(routing_key="old"))
    schedules.add("drop", spec())
    document = schedules.export()
    assert document["entries"]["from-file"]["source"] == "config"
    assert schedules.plan(document).changes == []  # an export applies as no change
    document["entries"]["change"]["kwargs"]["routing_key"] = "new"
    del document["entries"]["drop"]
    document["entries"]["new"] = {"schedule": {"every": 3}, "kwargs": {}}
    planned = schedules.plan(document)
    assert sorted((c.op, c.name) for c in planned.changes) == [
        ("add", "new"),
        ("edit", "change"),
        ("remove", "drop"),
    ]
    assert planned.left == ["from-file"]
    schedules.apply(planned)
    entries = schedules.load().entries
    assert sorted(entries) == ["change", "keep", "new"]
    assert entries["change"].spec["kwargs"]["routing_key"] == "new"
    # a bad entry in the file: refused whole
    document["entries"]["worse"] = {"schedule": {"every": -1}}
    with pytest.raises(ConfigError, match="entry 'worse'"):
        schedules.plan(document)


def test_a_tick_of_a_changed_or_removed_entry_is_not_numbered(
    schedules: Schedules, stats: Stats
) -> None:
    schedules.add("e", spec())
    rev = schedules.get("e").rev  # type: ignore[union-attr]
    assert stats.tick_number("e", 1.0, rev=rev) == 1
    schedules.edit("e", recipe(routing_key="x"))
    assert stats.tick_number("e", 2.0, rev=rev) is NotFired.STALE
    assert stats.tick_number("e", 1.0, rev=rev) == 1  # numbered before: its numbers stay
    new = schedules.get("e").rev  # type: ignore[union-attr]
    assert stats.tick_number("e", 2.0, rev=new) == 2
    schedules.remove("e")
    assert stats.tick_number("e", 3.0, rev=new) is NotFired.STALE
    assert stats.snapshot().entries["e"].ticks == 2


def test_max_runs_numbers_exactly_that_many_ticks_however_often_asked(stats: Stats) -> None:
    got = [stats.tick_number("m", float(t), max_runs=3) for t in range(1, 6)]
    assert got == [1, 2, 3, NotFired.FINISHED, NotFired.FINISHED]
    # a tick numbered before is given its numbers again (a beat that died before sending)
    assert stats.tick_number("m", 3.0, max_runs=3) == 3
    assert stats.client.hget(stats.keys.schedule_runs, "m") == "3"


def test_overlap_skip_skips_while_the_previous_tick_is_unsettled(stats: Stats) -> None:
    assert stats.tick_number("o", 10.0, overlap=True) == 1
    # the previous tick is not done: skipped, counted overlap, beat:last moved past it
    assert stats.tick_number("o", 11.0, overlap=True) is NotFired.OVERLAP
    e = stats.snapshot().entries["o"]
    assert (e.skipped, e.skipped_overlap, e.ticks) == (1, 1, 1)
    assert stats.client.get(stats.keys.beat_last("o")) == "11.0"
    # once it is done (its done bits), the next one fires
    stats.client.setbit(stats.keys.done(message_id("o", 10.0)), 0, 1)
    assert stats.tick_number("o", 12.0, overlap=True) == 2
    # an unsettled tick older than TICK_DEADLINE is done or failed by now: no skip
    assert stats.tick_number("o", 20.0, overlap=True, deadline=5.0) == 3
    # overlap allow (the default) fires whatever the previous
    assert stats.tick_number("o", 21.0) == 4


def test_a_backfilled_tick_keeps_the_numbers_it_was_given(stats: Stats) -> None:
    assert stats.tick_number("b", 100.0) == 1
    assert stats.backfill_number("b", 100.0) == 1  # numbered by beat before
    assert stats.backfill_number("b", 90.0) == 2  # never numbered: new, kept
    assert stats.backfill_number("b", 90.0) == 2
    e = stats.snapshot().entries["b"]
    assert (e.ticks, e.ticks_manual) == (1, 1)
