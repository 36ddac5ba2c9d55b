"""The Redis ACL rules ``pubtasks redis-acl`` prints (pure; the real user is tested in
``test_redis_acl``)."""

from __future__ import annotations

from pathlib import Path

from pubtasks import acl
from pubtasks.bench.worker import celery_isolation
from pubtasks.urls import redis_db

ROOT = Path(__file__).resolve().parent.parent


def test_the_default_rules_name_pubtasks_keys_celerys_and_nothing_else() -> None:
    rules = acl.rules("pubtasks:", {}, 0)
    assert rules[:3] == ["reset", "on", "-@all"]
    assert [r for r in rules if r.startswith("~")] == [
        "~pubtasks:*", "~celery*", "~_kombu.binding*", "~unacked", "~unacked_index",
        "~unacked_mutex", "~*.reply.celery.pidbox*",
    ]  # fmt: skip
    assert [r for r in rules if r.startswith("&")] == [
        "&/0.celery.pidbox", "&/0.celeryev/*", "&/0.celeryev/worker.*",
    ]  # fmt: skip
    assert "+evalsha" in rules and "+brpop" in rules and "+@all" not in rules


def test_the_rules_follow_the_configuration() -> None:
    conf = {
        **celery_isolation("t:"),
        "beat_schedule": {"e": {"options": {"queue": "ticks"}}, "f": {"options": {}}},
    }
    patterns = acl.keys("p:", conf)
    assert patterns == ["p:*", "t:celery*", "ticks*", "_kombu.binding*", "t:unacked",
                        "t:unacked_index", "t:unacked_mutex"]  # fmt: skip
    assert acl.channels(3, conf) == ["/3.celeryev/*", "/3.celeryev/worker.*"]
    assert acl.probe_keys("p:", conf)[:2] == ["p:acl-probe", "t:celerypubtasks-acl-probe"]


def test_the_database_of_a_redis_url() -> None:
    assert redis_db("redis://h:6379/4") == 4
    assert redis_db("redis://h:6379") == 0
    assert redis_db("rediss://u:p@h:6380/2?ssl_cert_reqs=required") == 2
    assert redis_db("sentinel://a:26379;sentinel://b:26379/5") == 5
    assert redis_db("unix:///run/redis.sock?db=7") == 7


def test_the_documented_line_is_the_printed_one() -> None:
    line = acl.setuser("pubtasks", acl.rules("pubtasks:", {}, 0))
    assert f"\n{line}\n" in (ROOT / "docs" / "configuration.md").read_text()
