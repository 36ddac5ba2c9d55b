"""Shared helpers for the integration tests: waiting, draining a queue, a real worker."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kombu.connection import Connection

T = TypeVar("T")

RABBIT = os.environ.get("PUBTASKS_TEST_RABBIT", "amqp://guest:guest@127.0.0.1:5672")
REDIS = os.environ.get("PUBTASKS_TEST_REDIS", "redis://127.0.0.1:6379")
#: The Redis database the tests use; every key they write is under their own prefix too.
REDIS_DB = int(os.environ.get("PUBTASKS_TEST_REDIS_DB", "14"))
CELERY = str(Path(sys.executable).with_name("celery"))


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def rabbitmqctl(*args: str) -> str:
    out = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return out.stdout


@dataclass
class Received:
    """One message taken off a queue."""

    body: dict[str, Any]
    properties: dict[str, Any]


def drain(amqp_url: str, queue: str) -> list[Received]:
    """Take every message off ``queue`` (basic.get, auto-ack) in arrival order."""
    got: list[Received] = []
    with Connection(amqp_url) as conn:
        channel = conn.channel()
        while True:
            msg = channel.basic_get(queue, no_ack=True)
            if msg is None:
                return got
            got.append(Received(json.loads(msg.body), dict(msg.properties)))


def queue_depth(amqp_url: str, queue: str) -> int:
    with Connection(amqp_url) as conn:
        return int(conn.channel().queue_declare(queue, passive=True).message_count)


def write_config(directory: Path, prefix: str, extra: str = "") -> None:
    """A celeryconfig.py for a test worker: its own stats prefix and Celery key prefix."""
    (directory / "celeryconfig.py").write_text(
        textwrap.dedent(
            f"""
            from pubtasks.schedule import every

            beat_schedule = {{"publish-text": {{"task": "pubtasks.publish", "schedule": every()}}}}
            STATS_PREFIX = {prefix!r}
            broker_transport_options = {{
                "visibility_timeout": 3600,
                "global_keyprefix": {prefix + "celery:"!r},
            }}
            CONFIRM_TIMEOUT = 2.0
            """
        )
        + textwrap.dedent(extra)
    )


class Worker:
    """The real ``celery -A pubtasks worker -B``, as a subprocess in its own session."""

    def __init__(self, cwd: Path, env: dict[str, str], concurrency: int = 2) -> None:
        self.cwd = cwd
        self.env = env
        self.log_path = cwd / "worker.log"
        self.args = [
            CELERY, "-A", "pubtasks", "worker", "-B", "-l", "info",
            "-c", str(concurrency), "--without-mingle", "--without-gossip",
            "-n", f"test-{os.getpid()}-{time.monotonic_ns()}@%h",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def run_to_exit(self, timeout: float) -> tuple[int, str]:
        """Run until the worker exits by itself; return its exit code and output."""
        out = subprocess.run(
            self.args,
            check=False,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return out.returncode, out.stdout + out.stderr

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> int | None:
        """Warm shutdown (SIGTERM), then SIGKILL to the whole group if it lingers."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # pool children and beat left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


def connections(vhost: str) -> list[str]:
    """The AMQP connections on ``vhost`` that RabbitMQ has not closed (closed ones linger
    in the list until their client reads the close)."""
    out = rabbitmqctl("list_connections", "--no-table-headers", "vhost", "name", "state")
    rows = [line.split("\t") for line in out.splitlines()]
    return [row[1] for row in rows if len(row) == 3 and row[0] == vhost and row[2] != "closed"]


def close_connections(vhost: str) -> int:
    """Have RabbitMQ close every connection on ``vhost``; wait until those are closed.

    Returns how many there were. New connections (a publisher reconnecting) may follow.
    """
    before = set(connections(vhost))
    rabbitmqctl("close_all_connections", "-p", vhost, "pubtasks test: forced close")
    wait_for(lambda: not before & set(connections(vhost)), 10, f"{vhost} to close them", 0.2)
    return len(before)
