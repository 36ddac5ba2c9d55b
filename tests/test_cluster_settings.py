"""Unit tests: cluster URLs, Sentinel, quorum queues and the return policy, as settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from kombu import Queue

from pubtasks.entries import recipe
from pubtasks.errors import ConfigError
from pubtasks.sentinel import Agreement, agreement, sentinels
from pubtasks.settings import Settings
from pubtasks.store import Replication
from pubtasks.urls import mask_url

NODES = "amqp://u:s3cret@h1:5672//;amqp://u:s3cret@h2:5673//;amqp://u:s3cret@h3:5674//"
SENTINELS = "sentinel://:pw9@h1:26379;sentinel://:pw9@h2:26380/2"


def test_several_amqp_nodes_are_one_setting_and_every_url_is_masked() -> None:
    s = Settings.load({"AMQP_URL": NODES}, {})
    assert s.amqp_url == NODES
    assert "s3cret" not in str(s) + repr(s)
    assert mask_url(NODES).count("u:**@") == 3


@pytest.mark.parametrize(
    ("name", "url", "fragment"),
    [
        ("AMQP_URL", "amqp://u:s3cret@h1//;;amqp://u:s3cret@h2//", "empty URL between its ';'"),
        ("AMQP_URL", "amqp://u:s3cret@h1//;redis://:s3cret@h2/0", "not a URL of the form amqp"),
        ("AMQP_URL", "amqp://u:s3cret@h1//;amqp://u:s3cret@h2:port//", "malformed"),
        ("REDIS_URL", "redis://:s3cret@h1/0;redis://:s3cret@h2/0", "only sentinel:// URLs"),
        ("REDIS_URL", "sentinel://:s3cret@h1;redis://:s3cret@h2/0", "only sentinel:// URLs"),
        ("REDIS_URL", "sentinel://:s3cret@:26379", "has no host"),
    ],
)
def test_a_bad_url_list_is_one_line_naming_the_variable(name: str, url: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load({name: url}, {})
    text = str(err.value)
    assert text.startswith(f"{name}=") and fragment in text and "s3cret" not in text
    assert "\n" not in text


def test_a_sentinel_url_names_the_sentinels_the_db_and_the_masters_password() -> None:
    s = Settings.load({"REDIS_URL": SENTINELS}, {})
    assert s.redis_master_name == "mymaster" and s.wait_replicas == 1
    where = sentinels(s.redis_url)
    assert where.hosts == [("h1", 26379), ("h2", 26380)]
    assert (where.db, where.password) == (2, "pw9")
    assert "pw9" not in str(s)


def test_the_master_name_and_the_replicas_to_wait_for_are_settings() -> None:
    env = {"REDIS_URL": SENTINELS, "REDIS_MASTER_NAME": "counters"}
    s = Settings.load(env, {"REDIS_WAIT_REPLICAS": 0})
    assert (s.redis_master_name, s.wait_replicas) == ("counters", 0)
    assert Settings.load({}, {}).wait_replicas == 0  # one Redis: nothing to wait for
    with pytest.raises(ConfigError, match=r"^REDIS_MASTER_NAME='my master' .*sentinel monitor"):
        Settings.load({"REDIS_MASTER_NAME": "my master"}, {})
    with pytest.raises(ConfigError, match=r"^REDIS_WAIT_REPLICAS=-1 in celeryconfig.py"):
        Settings.load({}, {"REDIS_WAIT_REPLICAS": -1})


def test_queue_type_quorum_makes_the_shorthand_queue_a_quorum_queue() -> None:
    [queue] = Settings.load({}, {"QUEUE_TYPE": "quorum"}).queues
    assert queue.durable and queue.queue_arguments == {"x-queue-type": "quorum"}
    [classic] = Settings.load({}, {}).queues
    assert not classic.queue_arguments  # RabbitMQ's default: no argument at all
    with pytest.raises(ConfigError, match=r"^QUEUE_TYPE='stream' in celeryconfig.py"):
        Settings.load({}, {"QUEUE_TYPE": "stream"})


def test_queue_type_is_shorthand_and_not_given_with_queues() -> None:
    queues = [Queue("q", queue_arguments={"x-queue-type": "quorum"})]
    with pytest.raises(ConfigError, match=r"^QUEUE_TYPE in celeryconfig.py are shorthand"):
        Settings.load({}, {"QUEUES": queues, "QUEUE_TYPE": "quorum"})


def test_on_return_defaults_to_retry_and_an_entry_may_say_count() -> None:
    s = Settings.load({}, {})
    assert recipe("e", {}, s.context).on_return == "retry"
    assert recipe("e", {"on_return": "count"}, s.context).on_return == "count"
    counting = Settings.load({}, {"ON_RETURN": "count"})
    assert recipe("e", {}, counting.context).on_return == "count"
    with pytest.raises(ConfigError, match=r"^beat_schedule entry 'e': 'on_return' is 'drop'"):
        recipe("e", {"on_return": "drop"}, s.context)
    with pytest.raises(ConfigError, match=r"^ON_RETURN='drop' in celeryconfig.py"):
        Settings.load({}, {"ON_RETURN": "drop"})


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_missing_replica_costs_one_timeout_per_recheck_not_one_per_write(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    r = Replication(1, clock)
    assert r.replicas() == 1
    r.acknowledged(0)  # the replica did not answer in time
    assert r.replicas() == 0  # the next writes do not wait...
    clock.now += Replication.RECHECK
    assert r.replicas() == 1  # ... until it is time to look again
    r.acknowledged(0)
    r.acknowledged(1)
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 2 and "0 of 1 replica(s)" in lines[0] and "is back" in lines[1]
    assert Replication(0, clock).replicas() == 0


def test_a_durable_write_waits_and_is_held_while_replicas_are_short_within_the_grace() -> None:
    clock = Clock()
    r = Replication(1, clock, grace=30.0)
    assert r.holding() and r.replicas(durable=True) == 1
    r.acknowledged(0)  # a failover: the new master has no replica yet
    assert r.replicas() == 0  # counts stop waiting for RECHECK...
    assert r.replicas(durable=True) == 1 and r.holding()  # ...numbering does not
    clock.now += 29.0
    r.acknowledged(0)
    assert r.holding()  # still short, still within the grace: held
    clock.now += 1.0
    assert not r.holding()  # a replica gone for good: numbering goes on without it
    assert r.replicas(durable=True) == 0  # and stops waiting, as the counts do
    clock.now += Replication.RECHECK
    r.acknowledged(1)  # back: the next shortness is held again, for a whole grace
    assert r.holding()
    r.acknowledged(0)
    clock.now += 29.0
    assert r.holding()
    assert Replication(0, clock).replicas(durable=True) == 0  # one Redis: nothing to wait for


def test_a_durable_write_goes_on_once_the_sentinels_settle_on_the_redis_it_landed_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    said = [Agreement(None, False)]  # what most Sentinels say (no majority yet)
    asked: list[float] = []

    def ask() -> Agreement:
        asked.append(clock.now)
        return said[0]

    r = Replication(1, clock, grace=30.0, ask=ask)
    assert r.asks_run_id(durable=True) and not r.asks_run_id(durable=False)
    r.acknowledged(0)  # a failover: the new master has no replica yet
    r.landed_on = "new"
    assert r.holding()  # no majority yet: held
    said[0] = Agreement("new", settled=False)
    clock.now += Replication.ASK_EVERY
    assert r.holding()  # named, but a replica is up (or a failover underway): held
    said[0] = Agreement("new", settled=True)
    assert r.holding()  # what they said is taken as true for ASK_EVERY...
    clock.now += Replication.ASK_EVERY
    assert not r.holding()  # ...then asked again: settled on the Redis written to
    assert r.replicas(durable=True) == 0  # and numbering stops waiting, as counts do
    assert "no replica up and no failover underway" in caplog.text
    r.landed_on = None  # a write that did not learn where it landed (INFO refused)
    assert r.holding()
    assert len(asked) == 3
    r.acknowledged(1)
    assert r.holding()  # replicas back: the next shortness asks afresh
    r.acknowledged(0)
    r.landed_on = "new"
    assert not r.holding() and len(asked) == 4


def test_a_write_on_a_redis_the_sentinels_do_not_name_is_held_past_the_grace() -> None:
    clock = Clock()
    said = [Agreement("new", settled=True)]
    r = Replication(1, clock, grace=30.0, ask=lambda: said[0])
    r.acknowledged(0)
    r.landed_on = "old"  # a connection kept to the old master, still calling itself one
    assert r.holding() and r.elsewhere()
    clock.now += 31.0
    assert r.holding() and r.elsewhere()  # the grace does not release it
    said[0] = Agreement(None, False)  # the Sentinels give no answer: the grace does
    clock.now += Replication.ASK_EVERY
    assert not r.holding() and not r.elsewhere()
    plain = Replication(1, clock, grace=30.0)  # no Sentinels: the grace alone
    plain.acknowledged(0)
    plain.landed_on = "old"
    assert plain.holding() and not plain.asks_run_id(durable=True)
    clock.now += 30.0
    assert not plain.holding()


class FakeSentinel:
    def __init__(self, master: dict[str, object] | None, replicas: tuple[str, ...] = ()) -> None:
        self.master = master
        self.replicas = [{"flags": f} for f in replicas]

    def sentinel_master(self, name: str) -> dict[str, object]:
        if self.master is None:
            raise redis.ConnectionError("no answer")
        return self.master

    def sentinel_slaves(self, name: str) -> list[dict[str, object]]:
        return self.replicas


def named(run_id: str, flags: str = "master", others: int = 2) -> dict[str, object]:
    return {
        "runid": run_id,
        "flags": flags,
        "role-reported": "master",
        "num-other-sentinels": others,
    }


def agreement_of(*sentinels: FakeSentinel) -> Agreement:
    pool = SimpleNamespace(
        sentinel_manager=SimpleNamespace(sentinels=list(sentinels)), service_name="m"
    )
    return agreement(SimpleNamespace(connection_pool=pool))  # type: ignore[arg-type]


def test_the_sentinels_agreement_takes_most_of_them_and_every_replica_down() -> None:
    down, up = "slave,s_down,disconnected", "slave"
    assert agreement_of(*[FakeSentinel(named("a"), (down,))] * 3) == Agreement("a", True)
    # a replica up: named, not settled (a failover could promote it without the write)
    assert agreement_of(*[FakeSentinel(named("a"), (up,))] * 3) == Agreement("a", False)
    # a failover underway that only its leader sees yet: named, not settled
    busy = FakeSentinel(named("a", "master,failover_in_progress"), (down,))
    assert agreement_of(busy, *[FakeSentinel(named("a"), (down,))] * 2) == Agreement("a", False)
    # one Sentinel that does not answer leaves the other two to settle it
    quiet = FakeSentinel(None)
    assert agreement_of(quiet, *[FakeSentinel(named("a"), (down,))] * 2) == Agreement("a", True)
    # two of three do not answer: no majority; nor two of five that the URL names
    assert agreement_of(FakeSentinel(named("a")), quiet, quiet) == Agreement(None, False)
    five = named("a", others=4)
    assert agreement_of(FakeSentinel(five), FakeSentinel(five)) == Agreement(None, False)
    # split between two masters, or one calling itself master no more
    assert agreement_of(FakeSentinel(named("a")), FakeSentinel(named("b")), quiet).run_id is None
    assert agreement_of(*[FakeSentinel(named("a", "master,s_down"))] * 3) == Agreement("a", False)
    assert agreement_of(*[FakeSentinel({**named("a"), "flags": {"master"}})] * 3).settled


def test_sentinel_urls_give_celerys_transport_the_master_name(tmp_path: Path) -> None:
    (tmp_path / "celeryconfig.py").write_text("broker_transport_options = {'unacked_key': 'u'}\n")
    show = (
        "from pubtasks.celery import app; print(sorted(app.conf.broker_transport_options.items()))"
    )
    env = {"REDIS_URL": SENTINELS, "REDIS_MASTER_NAME": "counters", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", show],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    # celeryconfig's options are laid over pubtasks', so master_name stays
    assert out.stdout.strip() == (
        "[('master_name', 'counters'), ('unacked_key', 'u'), ('visibility_timeout', 3600)]"
    )
