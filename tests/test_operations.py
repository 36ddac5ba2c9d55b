"""Operating it: two workers share one Redis and one RabbitMQ; the CLI for operators."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pubtasks.bench.waiting import wait_for
from pubtasks.confirms import Delivery, Outcome, Settled
from pubtasks.stats import Stats
from tests.helpers import (
    Worker,
    caught_up,
    check,
    clock_of,
    finish,
    holder_group,
    tally,
    write_config,
)
from tests.support.certs import issue, make_ca

pytestmark = pytest.mark.integration


@pytest.mark.e2e
@pytest.mark.faults
def test_two_workers_fire_each_tick_once_and_one_takes_over(
    two_workers: list[Worker], stats: Stats, amqp_url: str
) -> None:
    # Given two real workers with embedded beat, sharing Redis, RabbitMQ and the config
    workers = two_workers
    for w in workers:
        w.start()
    wait_for(lambda: stats.snapshot().totals.acked >= 20, 30, "20 acked ticks")
    # Then only one beat fires (the lock holder), and each tick is published once
    leader = wait_for(lambda: holder_group(stats), 10, "a beat lock holder")
    [dead] = [w for w in workers if w.proc is not None and w.proc.pid == leader]
    [alive] = [w for w in workers if w is not dead]
    assert dead.log.count("took the beat lock") == 1
    assert "took the beat lock" not in alive.log
    # When the worker holding the lock dies (SIGKILL, the whole worker)
    assert dead.proc is not None
    os.killpg(dead.proc.pid, signal.SIGKILL)
    killed_at = time.time()
    # Then the other takes over within 20 s, and ticks go on
    assert alive.proc is not None
    survivor = alive.proc.pid
    wait_for(lambda: holder_group(stats) == survivor, 20, "the other beat to take over", 0.1)
    took_over = time.time() - killed_at
    acked = stats.snapshot().totals.acked
    wait_for(lambda: stats.snapshot().totals.acked >= acked + 10, 30, "10 more ticks")
    wait_for(lambda: caught_up(stats), 60, "the new beat to catch up", 0.05)
    assert alive.stop() == 0
    dead.stop()  # reaps what the kill left
    queued = finish(alive.cwd, alive.env, stats)
    row = tally(
        "two workers, the beat holder's whole worker killed (SIGKILL)",
        amqp_url, stats, clock_of(*workers), took_over, "", queued, interval=0.2,
    )  # fmt: skip
    # No tick twice, none missing on the grid (the new holder went on from the last
    # tick sent), the invariant exact; the dead worker's reserved ticks were given back.
    check(row)
    assert row.duplicates == 0


def pubtasks(*args: str) -> list[str]:
    return [str(Path(sys.executable).with_name("pubtasks")), *args]


def seed(stats: Stats) -> None:
    """Real counters in Redis, through the same calls the publisher makes."""
    ds = [Delivery(f"a@{n}#t.{n}", f"a@{n}", "a", n) for n in (1, 2, 3)]
    ds.append(Delivery("b@1#t.4", "b@1", "b", 4))
    stats.begin(ds, time.time())
    stats.settle([Settled(d, Outcome.ACKED) for d in ds[:2]], time.time())
    stats.settle([Settled(ds[3], Outcome.NACKED)], time.time())
    stats.fail("b", [("b@1", 4)], "nacked by RabbitMQ", time.time())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_metrics_are_served_over_http(stats: Stats, redis_url: str, prefix: str) -> None:
    seed(stats)
    port = free_port()
    env = {"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    cmd = pubtasks("metrics", "--port", str(port), "--address", "127.0.0.1", "--prefix", prefix)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:

        def scrape() -> str | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    return str(r.read().decode())
            except OSError:
                return None

        text = wait_for(scrape, 20, "/metrics to answer", 0.1)
    finally:
        proc.terminate()
        proc.wait(10)
    assert 'pubtasks_published_total{entry="a"} 3.0' in text
    assert 'pubtasks_published_total{entry="b"} 1.0' in text
    assert 'pubtasks_acked_total{entry="a"} 2.0' in text
    assert 'pubtasks_nacked_total{entry="b"} 1.0' in text
    assert 'pubtasks_failed_total{entry="b"} 1.0' in text
    for name in ("returned", "unconfirmed"):
        assert f'pubtasks_{name}_total{{entry="a"}} 0.0' in text
    assert 'pubtasks_pending{entry="a"} 1.0' in text
    assert "pubtasks_oldest_pending_age_seconds " in text
    assert 'pubtasks_last_confirmed_timestamp_seconds{entry="a"}' in text


def listening(port: int) -> list[str]:
    """The local addresses that listen on TCP ``port`` (``ss``)."""
    out = subprocess.run(["ss", "-Hltn"], capture_output=True, text=True, check=True).stdout
    return [
        f[3].rpartition(":")[0]
        for f in map(str.split, out.splitlines())
        if f[3].endswith(f":{port}")
    ]


def test_metrics_listen_on_this_machine_only_by_default(redis_url: str, prefix: str) -> None:
    port = free_port()
    env = {"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    proc = subprocess.Popen(
        pubtasks("metrics", "--port", str(port), "--prefix", prefix),
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(lambda: listening(port), 20, "the exporter to listen", 0.1) == ["127.0.0.1"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_metrics_over_tls_with_a_client_certificate(
    stats: Stats, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    # Given a CA of the test's own, a server certificate for 127.0.0.1, a client's, and
    # the exporter serving HTTPS that requires a client certificate of that CA
    seed(stats)
    ca = make_ca(tmp_path)
    server = issue(ca, tmp_path, "exporter", ("127.0.0.1",))
    client = issue(ca, tmp_path, "prometheus")
    port = free_port()
    env = {"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    tls = ("--tls-cert", str(server.cert), "--tls-key", str(server.key))
    cmd = pubtasks(
        "metrics", "--port", str(port), "--prefix", prefix, *tls, "--tls-client-ca", str(ca.cert)
    )
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    url = f"https://127.0.0.1:{port}/metrics"

    def scrape(context: ssl.SSLContext) -> str:
        with urllib.request.urlopen(url, timeout=5, context=context) as r:
            return str(r.read().decode())

    trusted = ssl.create_default_context(cafile=str(ca.cert))
    with_cert = ssl.create_default_context(cafile=str(ca.cert))
    with_cert.load_cert_chain(str(client.cert), str(client.key))
    try:
        wait_for(lambda: listening(port), 20, "the exporter to listen", 0.1)
        # When Prometheus scrapes with its client certificate, it gets the metrics
        assert 'pubtasks_acked_total{entry="a"} 2.0' in scrape(with_cert)
        # ... and without one, or over plain HTTP, it gets nothing
        with pytest.raises((ssl.SSLError, ConnectionError, urllib.error.URLError)):
            scrape(trusted)
        with pytest.raises((ConnectionError, urllib.error.URLError, http.client.HTTPException)):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    finally:
        proc.terminate()
        proc.wait(10)
    # A half-given TLS is one line
    half = subprocess.run(
        pubtasks("metrics", "--port", str(port), "--prefix", prefix, *tls[:2]),
        check=False, env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert half.returncode == 2
    assert half.stderr.strip() == (
        "pubtasks: error: metrics: give --tls-cert and --tls-key together (TLS), or neither"
    )


def test_metrics_behind_basic_auth_over_tls(
    stats: Stats, redis_url: str, prefix: str, tmp_path: Path
) -> None:
    # Given the exporter serving HTTPS (a CA of the test's own) behind basic auth, its
    # credentials in a file
    seed(stats)
    ca = make_ca(tmp_path)
    server = issue(ca, tmp_path, "exporter", ("127.0.0.1",))
    secret = tmp_path / "auth"
    secret.write_text("prometheus:s3cret-scrape\n")
    port = free_port()
    env = {"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    tls = ("--tls-cert", str(server.cert), "--tls-key", str(server.key))
    cmd = pubtasks(
        "metrics", "--port", str(port), "--prefix", prefix, *tls, "--basic-auth-file", str(secret)
    )
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    trusted = ssl.create_default_context(cafile=str(ca.cert))

    def scrape(user: str | None, password: str = "") -> tuple[int, str]:
        request = urllib.request.Request(f"https://127.0.0.1:{port}/metrics")
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=5, context=trusted) as r:
                return r.status, str(r.read().decode())
        except urllib.error.HTTPError as exc:
            return exc.code, ""

    try:
        wait_for(lambda: listening(port), 20, "the exporter to listen", 0.1)
        # When Prometheus scrapes with the credentials, it gets the metrics
        status, text = scrape("prometheus", "s3cret-scrape")
        assert status == 200 and 'pubtasks_acked_total{entry="a"} 2.0' in text
        # ... without them, or with a wrong password, a 401
        assert scrape(None)[0] == 401
        assert scrape("prometheus", "guess")[0] == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert "s3cret-scrape" not in err
    assert f"serving https://127.0.0.1:{port}/metrics" in err


def test_stats_watch_refreshes_with_a_rate(stats: Stats, redis_url: str, prefix: str) -> None:
    seed(stats)
    env = {"REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        pubtasks("stats", "--watch", "--count", "2", "--prefix", prefix),
        env=env, capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    screens = out.split("\x1b[H\x1b[2J")[1:]
    assert len(screens) == 2
    assert "acked per second    0.00 (last minute)" in screens[1]
    assert "oldest pending" in screens[1] and "nacked by RabbitMQ" in screens[1]


def health_of(cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    run = subprocess.run(
        pubtasks("health"), cwd=cwd, env=env, capture_output=True, text=True, timeout=30,
        check=False,
    )  # fmt: skip
    return run.returncode, run.stdout.strip()


def unhealthy(cwd: Path, env: dict[str, str]) -> str | None:
    """The line of an unhealthy verdict; None while healthy."""
    code, line = health_of(cwd, env)
    return line if code == 1 else None


@pytest.mark.e2e
def test_health_follows_the_fleet_and_the_confirms(
    worker: Worker, stats: Stats, redis_url: str, worker_env: dict[str, str]
) -> None:
    def health() -> tuple[int, str]:
        return health_of(worker.cwd, worker_env)

    # Before any worker runs: unhealthy, and it says why
    code, line = health()
    assert (code, line) == (
        1,
        "unhealthy: no worker is alive (no worker heartbeat in the last 10 s)",
    )
    # While the worker publishes every 0.2 s: healthy
    worker.start()
    wait_for(lambda: health()[0] == 0, 30, "a healthy verdict", 0.2)
    wait_for(lambda: "last confirm" in health()[1], 30, "a confirm", 0.2)
    assert health()[1].startswith("healthy: publish-text: ")
    # Once it stops (its beat releases the lock), unhealthy
    assert worker.stop() == 0
    late = wait_for(lambda: unhealthy(worker.cwd, worker_env), 30, "unhealthy", 0.2)
    assert late is not None and late.startswith("unhealthy: no ")


@pytest.mark.e2e
def test_a_crontab_only_worker_is_healthy_and_unhealthy_soon_after_it_is_killed(
    worker: Worker, stats: Stats, worker_env: dict[str, str], prefix: str
) -> None:
    # Given a worker whose only entry is a daily crontab
    write_config(
        worker.cwd,
        prefix,
        """
        from celery.schedules import crontab
        beat_schedule = {
            "nightly": {"task": "pubtasks.publish", "schedule": crontab(minute=0, hour=3)}
        }
        """,
    )
    worker.start()
    # Then once it runs, it is healthy, long before its first tick
    wait_for(lambda: health_of(worker.cwd, worker_env)[0] == 0, 60, "a healthy verdict", 0.2)
    code, line = health_of(worker.cwd, worker_env)
    assert code == 0 and line.startswith("healthy: nightly: "), line
    # When the whole worker is killed (SIGKILL: its beat releases nothing)
    assert worker.proc is not None
    os.killpg(worker.proc.pid, signal.SIGKILL)
    killed = time.monotonic()
    worker.proc.wait(10)
    # Then it is unhealthy within 30 s (the heartbeats and the beat lock expire in 10 s)
    late = wait_for(lambda: unhealthy(worker.cwd, worker_env), 30, "unhealthy", 0.2)
    print(f"unhealthy {time.monotonic() - killed:.1f} s after the kill: {late}")
    assert late is not None and late.startswith("unhealthy: no "), late
