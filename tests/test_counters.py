"""Unit tests: what each outcome of a publish does to the counters (``counters``)."""

from __future__ import annotations

import pytest

from pubtasks.confirms import Delivery, Outcome, Settled
from pubtasks.counters import EFFECTS, Effect, lua_table, outcome_of
from pubtasks.keys import COUNTERS


@pytest.mark.parametrize(
    ("outcome", "effect"),
    [
        ("acked", Effect(("acked",), done=True, latency=True)),
        ("returned", Effect(("acked", "returned"), done=True, latency=True)),
        ("bounced", Effect(("acked", "returned"), done=False, latency=True)),
        ("nacked", Effect(("nacked",), done=False, latency=False)),
        ("unconfirmed", Effect(("unconfirmed",), done=False, latency=False)),
    ],
)
def test_each_outcome_changes_what_it_should(outcome: str, effect: Effect) -> None:
    assert EFFECTS[outcome] == effect
    assert set(effect.counters) <= set(COUNTERS)


def test_the_table_has_a_row_for_every_outcome_and_no_other() -> None:
    assert set(EFFECTS) == {o.value for o in Outcome} | {"returned", "bounced"}


def test_the_invariant_holds_row_by_row() -> None:
    # published = acked + nacked + unconfirmed + pending: each settled publish leaves
    # pending and adds one to exactly one of acked, nacked, unconfirmed
    for effect in EFFECTS.values():
        assert sum(c in ("acked", "nacked", "unconfirmed") for c in effect.counters) == 1


def delivery(retry_return: bool = False, returned: bool = False) -> Delivery:
    d = Delivery("e@1#w.1", "e@1", "e", 1, retry_return=retry_return)
    if returned:
        d.returned = "NO_ROUTE"
    return d


@pytest.mark.parametrize(
    ("settled", "row"),
    [
        (Settled(delivery(), Outcome.ACKED), "acked"),
        (Settled(delivery(), Outcome.NACKED), "nacked"),
        (Settled(delivery(), Outcome.UNCONFIRMED), "unconfirmed"),
        (Settled(delivery(returned=True), Outcome.ACKED), "returned"),
        (Settled(delivery(retry_return=True, returned=True), Outcome.ACKED), "bounced"),
    ],
)
def test_a_settled_publish_counts_under_its_row(settled: Settled, row: str) -> None:
    assert outcome_of(settled) == row


def test_the_settle_script_gets_the_table() -> None:
    text = lua_table()
    assert "returned = {counters = {'acked', 'returned'}, done = true, latency = true}" in text
    assert text.count(" = {counters") == len(EFFECTS)
