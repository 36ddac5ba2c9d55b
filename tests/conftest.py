"""Fixtures: each test gets its own RabbitMQ vhost and its own Redis key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pubtasks.bench.services import forget_celery_keys
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from tests.helpers import RABBIT, REDIS, REDIS_DB, Worker, rabbitmqctl, write_config
from tests.support.proxy import Proxy


@pytest.fixture
def vhost() -> Iterator[str]:
    """A fresh RabbitMQ vhost for this test, deleted (with all it holds) afterwards."""
    name = f"pubtasks-test-{uuid.uuid4().hex[:10]}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        rabbitmqctl("delete_vhost", name)


@pytest.fixture
def amqp_url(vhost: str) -> str:
    return f"{RABBIT}/{vhost}"


@pytest.fixture
def redis_url() -> str:
    return f"{REDIS}/{REDIS_DB}"


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A Redis key prefix of this test's own; every key under it is deleted afterwards."""
    name = f"pubtasks-test:{uuid.uuid4().hex[:10]}:"
    yield name
    stats = Stats.from_url(redis_url, name)
    stats.clear()  # the statistics and Celery's queues, all named after the prefix
    stats.close()
    forget_celery_keys(redis_url, name)  # kombu's binding keys that name them


@pytest.fixture
def stats(redis_url: str, prefix: str) -> Iterator[Stats]:
    s = Stats.from_url(redis_url, prefix)
    yield s
    s.close()


@pytest.fixture
def settings(amqp_url: str, redis_url: str, prefix: str) -> Settings:
    return Settings.load(
        {"AMQP_URL": amqp_url, "REDIS_URL": redis_url, "PUBLISH_INTERVAL": "0.2"},
        {"STATS_PREFIX": prefix, "CONFIRM_TIMEOUT": 2.0},
    )


@pytest.fixture
def worker_env(amqp_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PUBTASKS_"))}
    env.update(AMQP_URL=amqp_url, REDIS_URL=redis_url, PUBLISH_INTERVAL="0.2", PYTHONUNBUFFERED="1")
    return env


@pytest.fixture
def worker_dir(tmp_path: Path, prefix: str) -> Path:
    write_config(tmp_path, prefix)
    return tmp_path


@pytest.fixture
def worker(worker_dir: Path, worker_env: dict[str, str]) -> Iterator[Worker]:
    """A real worker with embedded beat (not started); stopped, group and all, afterwards."""
    w = Worker(worker_dir, worker_env)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture
def two_workers(tmp_path: Path, prefix: str, worker_env: dict[str, str]) -> Iterator[list[Worker]]:
    """Two real workers with embedded beat (not started), sharing Redis, RabbitMQ and the
    configuration, each in a directory of its own; stopped afterwards."""
    workers = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_config(tmp_path / name, prefix)
        workers.append(Worker(tmp_path / name, dict(worker_env)))
    try:
        yield workers
    finally:
        for w in workers:
            w.stop()


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    """A TCP proxy to RabbitMQ that the test can cut silently and restore."""
    p = Proxy()
    try:
        yield p
    finally:
        p.close()
