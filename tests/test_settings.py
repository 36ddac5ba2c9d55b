"""Unit tests: settings are checked once, and errors name the setting without passwords."""

from __future__ import annotations

from pathlib import Path

import pytest

from pubtasks.errors import ConfigError, StatsUnavailable
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from pubtasks.topology import Topology
from pubtasks.urls import check_broker, mask_url


def test_defaults_are_the_pika_examples() -> None:
    s = Settings.load({}, {})
    assert (s.exchange, s.routing_key) == ("message", "example.text")
    [exchange] = s.exchanges
    assert (exchange.name, exchange.type, exchange.durable) == ("message", "topic", True)
    [queue] = s.queues
    assert (queue.name, queue.exchange.name, queue.routing_key) == (
        "text",
        "message",
        "example.text",
    )
    assert queue.durable
    assert s.publish_interval == 1.0
    assert s.amqp_url == "amqp://guest:guest@localhost:5672//"
    assert s.redis_url == "redis://localhost:6379/0"


def test_celeryconfig_values_override_defaults() -> None:
    s = Settings.load(
        {"PUBLISH_INTERVAL": "0.5"},
        {"EXCHANGE": "x", "ROUTING_KEY": "a.b", "STATS_PREFIX": "p:", "PUBLISH_ATTEMPTS": 3},
    )
    assert (s.exchange, s.routing_key, s.stats_prefix) == ("x", "a.b", "p:")
    assert (s.queues[0].exchange.name, s.queues[0].routing_key) == ("x", "a.b")  # BINDING_KEY
    assert s.publish_interval == 0.5
    assert s.publish_attempts == 3


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "inf", ""])
def test_a_bad_publish_interval_names_the_variable(raw: str) -> None:
    env = {"PUBLISH_INTERVAL": raw}
    if raw == "":
        assert Settings.load(env, {}).publish_interval == 1.0  # empty means unset
        return
    with pytest.raises(ConfigError, match=r"^PUBLISH_INTERVAL=") as err:
        Settings.load(env, {})
    assert "positive number of seconds" in str(err.value)


@pytest.mark.parametrize(
    ("name", "url", "fragment"),
    [
        ("AMQP_URL", "http://guest:s3cret@host//", "not a URL of the form amqp://"),
        ("AMQP_URL", "amqp://guest:s3cret@host:notaport//", "malformed"),
        ("AMQP_URL", "amqp://guest:s3cret@:5672//", "has no host"),
        ("REDIS_URL", "localhost:6379", "not a URL of the form redis://"),
        ("REDIS_URL", "redis://:s3cret@host:99999/0", "malformed"),
    ],
)
def test_a_malformed_url_names_the_variable_and_hides_the_password(
    name: str, url: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load({name: url}, {})
    text = str(err.value)
    assert text.startswith(f"{name}=")
    assert fragment in text
    assert "s3cret" not in text


@pytest.mark.parametrize(
    "url", ["amqp://guest:s3cret@rabbit:5672//", "sqs://key:s3cret@", "nonsense"]
)
@pytest.mark.parametrize("where", ["celeryconfig", "environment"])
def test_a_celery_broker_other_than_redis_is_refused_in_one_line(url: str, where: str) -> None:
    env, conf = (
        ({}, {"broker_url": url}) if where == "celeryconfig" else ({"CELERY_BROKER_URL": url}, {})
    )
    with pytest.raises(ConfigError) as err:
        Settings.load(env, conf)
    text = str(err.value)
    assert text.startswith("broker_url (or CELERY_BROKER_URL)=")
    assert "Redis only" in text and "s3cret" not in text and "\n" not in text


def test_a_redis_or_sentinel_celery_broker_is_taken() -> None:
    for url in ("redis://:pw@localhost:6379/3", "sentinel://a:26379;sentinel://b:26379"):
        assert check_broker(url) == url
        assert Settings.load({}, {"broker_url": url}).redis_url == "redis://localhost:6379/0"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("EXCHANGE_TYPE", "fancy"),
        ("CONFIRM_TIMEOUT", 0),
        ("PUBLISH_ATTEMPTS", "many"),
        ("QUEUE", ""),
        ("DECLARE", "some"),
    ],
)
def test_bad_celeryconfig_values_name_the_setting(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^{key}="):
        Settings.load({}, {key: value})


def test_settings_print_without_passwords() -> None:
    s = Settings.load({"AMQP_URL": "amqp://u:hunter2@h:5672/v", "REDIS_URL": "redis://:pw9@h/1"})
    assert "hunter2" not in str(s) + repr(s)
    assert "pw9" not in str(s) + repr(s)
    assert mask_url("amqp://u:hunter2@h:5672/v") == "amqp://u:**@h:5672/v"


def test_unreachable_redis_is_one_clear_error_without_the_password() -> None:
    s = Stats.from_url("redis://:s3cret@127.0.0.1:1/0", "p:", retries=0)
    with pytest.raises(StatsUnavailable) as err:
        s.snapshot()
    assert "redis://:**@127.0.0.1:1/0" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_declare_all_passive_or_none_shapes_the_declarations() -> None:
    s = Settings.load({}, {})
    assert s.declare == "all"
    every_step = [d.what for d in Topology.from_settings(s).declarations()]
    assert every_step == [
        "exchange 'message' (topic, durable)",
        "queue 'text' (durable)",
        "binding of queue 'text' to exchange 'message' with key 'example.text'",
    ]
    passive = Topology.from_settings(Settings.load({}, {"DECLARE": "passive"})).declarations()
    assert [d.what for d in passive] == every_step[:2]  # a binding cannot be checked
    assert all(d.failure.startswith("cannot find {what}") for d in passive)
    assert Topology.from_settings(Settings.load({}, {"DECLARE": "none"})).declarations() == []


def test_urls_from_files_the_docker_secrets_way(tmp_path: Path) -> None:
    (tmp_path / "amqp").write_text("amqp://u:hunter2@h:5672/v\n")
    (tmp_path / "redis").write_text("  redis://:pw9@h:6379/1  \n")
    env = {"AMQP_URL_FILE": str(tmp_path / "amqp"), "REDIS_URL_FILE": str(tmp_path / "redis")}
    s = Settings.load(env)
    assert (s.amqp_url, s.redis_url) == ("amqp://u:hunter2@h:5672/v", "redis://:pw9@h:6379/1")
    assert "hunter2" not in str(s) and "pw9" not in str(s)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"AMQP_URL": "amqp://h//", "AMQP_URL_FILE": "x"}, "AMQP_URL and AMQP_URL_FILE are both"),
        ({"AMQP_URL_FILE": "/nowhere/secret"}, "AMQP_URL_FILE='/nowhere/secret' cannot be read"),
        ({"REDIS_URL_FILE": "EMPTY"}, "REDIS_URL_FILE='EMPTY' must hold one URL on one line"),
        ({"REDIS_URL_FILE": "BAD"}, "REDIS_URL=http://:**@h/ is not a URL"),
    ],
)
def test_a_bad_url_file_is_one_line_naming_it(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "bad").write_text("http://:s3cret@h/\n")
    files = {"EMPTY": str(tmp_path / "empty"), "BAD": str(tmp_path / "bad")}
    env = {k: files.get(v, v) for k, v in env.items()}
    with pytest.raises(ConfigError) as err:
        Settings.load(env)
    text = str(err.value).replace(str(tmp_path / "empty"), "EMPTY")
    assert expected in text
    assert "s3cret" not in text
