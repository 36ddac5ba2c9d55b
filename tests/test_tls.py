"""TLS with a CA of the test's own (``openssl``): a RabbitMQ node with a TLS listener
that requires a client certificate, and a Redis that speaks only TLS and requires one
too. The real worker runs with ``AMQP_SSL`` and a ``rediss://`` URL's parameters, and
what RabbitMQ received is counted against what was due; a wrong CA, a wrong host name
and TLS spoken to a plain port are refused at start, at once, in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import pytest
import redis

from pubtasks.bench.waiting import wait_for
from pubtasks.stats import Stats
from tests.helpers import Worker, check, clock_of, finish, tally, write_config
from tests.support.certs import Pair, issue, make_ca
from tests.support.nodes import RabbitNode, free_port, pings

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.faults]

INTERVAL = 0.2


@dataclass(frozen=True)
class Pki:
    ca: Pair
    other_ca: Pair  # signs nothing of the servers'
    server: Pair  # for localhost and 127.0.0.1
    client: Pair


@dataclass(frozen=True)
class Servers:
    pki: Pki
    rabbit: RabbitNode
    tls_port: int  # the node's TLS listener; rabbit.port is its plain one
    redis_port: int  # TLS only


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    root = Path(tempfile.mkdtemp(prefix="pubtasks-tls-"))
    os.chmod(root, 0o755)  # the node runs as the rabbitmq user
    certs = root / "certs"
    ca = make_ca(certs)
    pki = Pki(
        ca,
        make_ca(certs / "other", "other"),
        issue(ca, certs, "server", ("localhost", "127.0.0.1")),
        issue(ca, certs, "client"),
    )
    node_certs = root / "rabbit" / "certs"  # copies the rabbitmq user can read
    node_certs.mkdir(parents=True)
    for pair in (pki.server, pki.ca):
        shutil.copy(pair.cert, node_certs / pair.cert.name)
    shutil.copy(pki.server.key, node_certs / pki.server.key.name)
    tls_port = free_port()
    rabbit = RabbitNode(
        root / "rabbit",
        f"pubtasks-tls-{os.getpid()}",
        config=(
            f"listeners.ssl.default = 127.0.0.1:{tls_port}\n"
            f"ssl_options.cacertfile = {node_certs / 'ca.pem'}\n"
            f"ssl_options.certfile = {node_certs / 'server.pem'}\n"
            f"ssl_options.keyfile = {node_certs / 'server.key'}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = true\n"
        ),
    )
    redis_port = free_port()
    redis_proc = subprocess.Popen([
        "redis-server", "--port", "0", "--tls-port", str(redis_port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(pki.server.cert), "--tls-key-file", str(pki.server.key),
        "--tls-ca-cert-file", str(ca.cert), "--tls-auth-clients", "yes",
        "--save", "", "--appendonly", "no", "--dir", str(root),
        "--logfile", str(root / "redis.log"),
    ])  # fmt: skip
    try:
        rabbit.start()
        client = redis.Redis(port=redis_port, **redis_tls(pki))
        wait_for(lambda: pings(client), 30, "the TLS Redis", 0.05)
        client.close()
        yield Servers(pki, rabbit, tls_port, redis_port)
    finally:
        redis_proc.terminate()
        redis_proc.wait(20)
        rabbit.stop()
        shutil.rmtree(root, ignore_errors=True)


def redis_tls(pki: Pki, ca: Pair | None = None) -> dict[str, object]:
    return {
        "ssl": True,
        "ssl_ca_certs": str((ca or pki.ca).cert),
        "ssl_certfile": str(pki.client.cert),
        "ssl_keyfile": str(pki.client.key),
        "ssl_cert_reqs": "required",
    }


def rediss_url(servers: Servers, ca: Pair | None = None) -> str:
    params = {k: v for k, v in redis_tls(servers.pki, ca).items() if k != "ssl"}
    return f"rediss://127.0.0.1:{servers.redis_port}/0?{urlencode(params)}"


@pytest.fixture
def tls_vhost(servers: Servers) -> Iterator[str]:
    name = f"pubtasks-test-{uuid.uuid4().hex[:10]}"
    servers.rabbit.ctl("add_vhost", name)
    try:
        servers.rabbit.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        servers.rabbit.ctl("delete_vhost", name)


@pytest.fixture
def tls_stats(servers: Servers, prefix: str) -> Iterator[Stats]:
    """The statistics in the TLS Redis, under the test's prefix; deleted afterwards."""
    stats = Stats.from_url(rediss_url(servers), prefix)
    try:
        yield stats
    finally:
        stats.clear()
        stats.close()


def amqp_ssl(pki: Pki, ca: Pair | None = None, **more: str) -> str:
    given = {
        "ca_certs": str((ca or pki.ca).cert),
        "certfile": str(pki.client.cert),
        "keyfile": str(pki.client.key),
        **more,
    }
    return f"AMQP_SSL = {given!r}\n"


def test_the_worker_publishes_over_tls_with_client_certificates(
    servers: Servers,
    tls_vhost: str,
    tls_stats: Stats,
    prefix: str,
    tmp_path: Path,
    worker_env: dict[str, str],
) -> None:
    # Given a worker with AMQP_SSL (the CA, its client certificate) on the node's TLS
    # listener, and Redis over TLS through the rediss:// URL's parameters
    write_config(tmp_path, prefix, amqp_ssl(servers.pki))
    env = {
        **worker_env,
        "AMQP_URL": f"amqps://guest:guest@localhost:{servers.tls_port}/{tls_vhost}",
        "REDIS_URL": rediss_url(servers),
        "PUBLISH_INTERVAL": str(INTERVAL),
    }
    worker = Worker(tmp_path, env)
    try:
        # When it runs for 15 acks, and the CLI reads the counters over TLS too
        worker.start()
        wait_for(lambda: tls_stats.snapshot().totals.acked >= 15, 60, "15 acks", 0.1)
        stats_out = subprocess.run(
            [str(Path(worker.args[0]).with_name("pubtasks")), "stats", "--prefix", prefix],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert worker.stop() == 0, worker.log[-3000:]
    finally:
        worker.stop()
    queued = finish(tmp_path, env, tls_stats)
    # Then every due tick reached the queue (read on the node's plain listener)
    row = tally(
        "TLS: AMQP_SSL and rediss://, client certificates", servers.rabbit.url(tls_vhost),
        tls_stats, clock_of(worker), None, "", queued, interval=INTERVAL,
    )  # fmt: skip
    check(row)
    assert stats_out.returncode == 0, stats_out.stderr
    assert "publish-text" in stats_out.stdout
    assert "Traceback" not in worker.log


@pytest.mark.parametrize(
    "case",
    ["amqp: wrong CA", "amqp: wrong host name", "amqp: TLS to the plain port", "redis: wrong CA"],
)
def test_a_tls_failure_is_refused_at_start_at_once_in_one_line(
    case: str,
    servers: Servers,
    tls_vhost: str,
    prefix: str,
    tmp_path: Path,
    worker_env: dict[str, str],
) -> None:
    pki = servers.pki
    port, config, redis_url = servers.tls_port, amqp_ssl(pki), rediss_url(servers)
    if case == "amqp: wrong CA":
        config = amqp_ssl(pki, pki.other_ca)
    elif case == "amqp: wrong host name":
        config = amqp_ssl(pki, server_hostname="rabbit.example.org")
    elif case == "amqp: TLS to the plain port":
        port = servers.rabbit.port
    else:
        redis_url = rediss_url(servers, pki.other_ca)
    write_config(tmp_path, prefix, config)
    env = {
        **worker_env,
        "AMQP_URL": f"amqps://guest:guest@localhost:{port}/{tls_vhost}",
        "REDIS_URL": redis_url,
    }
    code, output = Worker(tmp_path, env).run_to_exit(timeout=90)
    assert code == 2, output[-3000:]
    assert "Traceback" not in output
    assert "retrying" not in output  # refused at once
    [line] = [x for x in output.splitlines() if x.startswith("pubtasks: error:")]
    assert "TLS failed" in line
    expected = {
        "amqp: wrong CA": "CERTIFICATE_VERIFY_FAILED",
        "amqp: wrong host name": "rabbit.example.org",
        "amqp: TLS to the plain port": "SSL",
        "redis: wrong CA": "CERTIFICATE_VERIFY_FAILED",
    }[case]
    assert expected in line, line
    assert "guest:guest" not in output


def test_the_bench_measures_over_tls(
    servers: Servers, tls_vhost: str, prefix: str, tmp_path: Path
) -> None:
    # Given AMQP_SSL in the celeryconfig.py of the directory the bench runs in
    (tmp_path / "celeryconfig.py").write_text(
        f"STATS_PREFIX = {prefix!r}\n" + amqp_ssl(servers.pki)
    )
    env = {
        "AMQP_URL": f"amqps://guest:guest@localhost:{servers.tls_port}/{tls_vhost}",
        "REDIS_URL": rediss_url(servers),
        "PATH": "/usr/bin:/bin",
    }
    # When it runs (pika, kombu and pubtasks each publish over TLS)
    out = subprocess.run(
        [str(Path(sys.executable).with_name("pubtasks")), "bench", "--json",
         "--messages", "300", "--rounds", "1", "--tick-seconds", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # Then each measured, and pubtasks counted every message
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    for key in ("pika_msgs_per_s", "kombu_confirm_msgs_per_s", "pubtasks_batch_msgs_per_s"):
        assert got[key] > 0, key
    assert got["pubtasks_batch_counted"]["acked"] == 300
