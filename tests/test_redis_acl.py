"""A Redis ACL user: the rules ``pubtasks redis-acl`` prints run the real worker with
-B, the CLI and the exporter; a user without one of them is refused at start in one
line. What RabbitMQ received is counted against what was due."""

from __future__ import annotations

import shlex
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from pubtasks.bench.waiting import wait_for
from pubtasks.stats import Stats
from tests.helpers import REDIS_DB, Worker, check, clock_of, finish, tally
from tests.test_operations import free_port, listening

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

INTERVAL = 0.2
HOST = "127.0.0.1:6379"


def printed_rules(cwd: Path, env: dict[str, str], user: str) -> list[str]:
    """The rules after ``ACL SETUSER user`` that ``pubtasks redis-acl`` prints here."""
    out = subprocess.run(
        [sys.executable, "-m", "pubtasks", "redis-acl", "--user", user],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    words = shlex.split(out.strip())
    assert words[:3] == ["ACL", "SETUSER", user] and words[-1] == ">PASSWORD"
    return words[3:-1]


class AclUser:
    """A Redis user of the test's own, deleted afterwards."""

    def __init__(self, admin: redis.Redis) -> None:
        self.admin = admin
        self.name, self.password = f"pubtasks-acl-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex

    def set(self, rules: list[str]) -> None:
        self.admin.execute_command("ACL", "SETUSER", self.name, *rules, f">{self.password}")

    @property
    def url(self) -> str:
        return f"redis://{self.name}:{self.password}@{HOST}/{REDIS_DB}"


@pytest.fixture
def acl_user(stats: Stats) -> Iterator[AclUser]:
    user = AclUser(stats.client)
    try:
        yield user
    finally:
        stats.client.execute_command("ACL", "DELUSER", user.name)


def test_the_printed_acl_runs_the_worker_the_cli_and_the_exporter(
    worker_dir: Path,
    worker_env: dict[str, str],
    stats: Stats,
    amqp_url: str,
    acl_user: AclUser,
) -> None:
    # Given a Redis user with the rules pubtasks redis-acl prints for this configuration
    acl_user.set(printed_rules(worker_dir, worker_env, acl_user.name))
    env = {**worker_env, "REDIS_URL": acl_user.url, "PUBLISH_INTERVAL": str(INTERVAL)}
    worker = Worker(worker_dir, env)
    try:
        # When the worker runs with it until 15 acks, and each command reads with it
        worker.start()
        wait_for(lambda: stats.snapshot().totals.acked >= 15, 60, "15 acks", 0.1)
        prefix = stats.keys.prefix
        for args in (["stats"], ["schedule", "list"], ["health"]):
            out = subprocess.run(
                [sys.executable, "-m", "pubtasks", *args, "--prefix", prefix],
                cwd=worker_dir, env=env, capture_output=True, text=True, timeout=60,
                check=False,
            )  # fmt: skip
            assert out.returncode == 0, (args, out.stderr)
            assert "NOPERM" not in out.stdout + out.stderr
        port = free_port()
        exporter = subprocess.Popen(
            [sys.executable, "-m", "pubtasks", "metrics", "--port", str(port), "--prefix", prefix],
            cwd=worker_dir, env=env, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for(lambda: listening(port), 20, "the exporter", 0.1)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                scraped = r.read().decode()
        finally:
            exporter.terminate()
            exporter.wait(10)
        assert worker.stop() == 0, worker.log[-3000:]
    finally:
        worker.stop()
    queued = finish(worker_dir, env, stats)
    # Then every due tick reached RabbitMQ, nothing was refused, and the exporter read it
    row = tally(
        "Redis ACL user", amqp_url, stats, clock_of(worker), None, "", queued, interval=INTERVAL
    )
    check(row)
    assert "NOPERM" not in worker.log
    assert 'pubtasks_acked_total{entry="publish-text"}' in scraped


@pytest.mark.parametrize("dropped", ["+zremrangebyscore", "~_kombu.binding*"])
def test_a_user_without_one_rule_is_refused_at_start_in_one_line(
    dropped: str,
    worker_dir: Path,
    worker_env: dict[str, str],
    acl_user: AclUser,
) -> None:
    rules = printed_rules(worker_dir, worker_env, acl_user.name)
    assert dropped in rules
    acl_user.set([r for r in rules if r != dropped])
    env = {**worker_env, "REDIS_URL": acl_user.url}
    code, output = Worker(worker_dir, env).run_to_exit(timeout=90)
    assert code == 2
    assert "Traceback" not in output
    [line] = [x for x in output.splitlines() if x.startswith("pubtasks: error:")]
    assert "refuses what pubtasks needs" in line
    assert dropped.lstrip("+~").rstrip("*").upper() in line.upper()
    assert "pubtasks redis-acl" in line
    assert acl_user.password not in output
