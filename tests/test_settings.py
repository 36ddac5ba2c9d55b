"""Unit tests: settings are checked once, and errors name the setting without passwords."""

from __future__ import annotations

import pytest

from pubtasks.errors import ConfigError, StatsUnavailable
from pubtasks.settings import Settings
from pubtasks.stats import Stats
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
