"""Unit tests: which reserved deliveries are given back (pure, a fake clock)."""

from __future__ import annotations

from pubtasks.orphans import Orphans


def test_a_delivery_nobody_holds_is_given_back_after_the_grace() -> None:
    orphans = Orphans(grace=5)
    assert orphans.update({"t1", "t2"}, {"t2"}, now=100) == []
    assert orphans.update({"t1", "t2"}, {"t2"}, now=104.9) == []
    assert orphans.update({"t1", "t2"}, {"t2"}, now=105) == ["t1"]
    # given back once: the next look starts its grace again if it is still there
    assert orphans.update({"t1"}, set(), now=106) == []


def test_a_delivery_held_again_or_acked_within_the_grace_is_left_alone() -> None:
    orphans = Orphans(grace=5)
    orphans.update({"new", "done"}, set(), now=0)  # its worker has not reported it yet
    assert orphans.update({"new"}, {"new"}, now=3) == []  # reported: held
    assert orphans.update({"new"}, set(), now=7) == []  # unheld again: a new grace begins
    assert orphans.update({"new"}, set(), now=12) == ["new"]
    assert orphans.update(set(), set(), now=20) == []  # "done" was acked meanwhile
