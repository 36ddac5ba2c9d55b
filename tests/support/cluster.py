"""``scripts/cluster up|down``: a RabbitMQ cluster and Redis with Sentinel on one machine.

``up`` starts, under one directory and on free localhost ports, from the
``rabbitmq-server`` and ``redis-server`` already installed:

- three RabbitMQ nodes (``pubtasks-c1@localhost``..., or ``<dir>-c1@localhost``... for
  a ``--dir`` other than the default, so that two clusters on one machine do not share
  Erlang node names), the second and third joined to the first with ``rabbitmqctl
  join_cluster``;
- a Redis master and one replica (append-only, fsynced), and three Sentinels
  (``redis-server --sentinel``) that watch the master as ``mymaster``, with a
  quorum of 2, and call it down after 1 s without an answer.

It writes ``cluster.json`` there (names, ports, directories) and prints the
environment a worker needs: ``AMQP_URL`` naming the three nodes, ``REDIS_URL``
naming the three Sentinels, and ``REDIS_MASTER_NAME``. ``down`` stops everything
``cluster.json`` lists, whatever state it is in, and removes the directory. ``up``
first does a ``down`` of whatever a killed run left there. Nothing here touches
the default RabbitMQ on 5672 or the default Redis on 6379.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from pubtasks.bench.waiting import wait_for
from tests.support.nodes import RabbitNode, free_port, pings

DEFAULT_DIR = Path("/tmp/pubtasks-cluster")
MASTER_NAME = "mymaster"
#: Sentinel calls the master down after this long without an answer.
DOWN_AFTER_MS = 1000
NODES = 3
SENTINELS = 3


def say(line: str) -> None:
    print(f"cluster {time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError, IndexError):
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


@dataclass
class RedisProcess:
    """A daemonized ``redis-server`` (or Sentinel) with its own directory and port."""

    name: str
    directory: str
    port: int
    args: list[str]

    @property
    def pid_file(self) -> Path:
        return Path(self.directory) / "redis.pid"

    def start(self) -> None:
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        subprocess.run(self.args, check=True, capture_output=True, timeout=30)
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            wait_for(lambda: pings(client), 30, f"{self.name} on port {self.port}", 0.05)
        finally:
            client.close()

    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.pid_file.read_text().strip())
        return None

    def kill(self) -> None:
        """SIGKILL: what was neither replicated nor written to the AOF is gone."""
        pid = self.pid()
        if pid is not None and _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not _alive(pid), 10, f"{self.name} to die", 0.02)


def redis_server(name: str, directory: Path, replica_of: int | None = None) -> RedisProcess:
    port = free_port()
    args = [
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
        "--daemonize", "yes", "--pidfile", str(directory / "redis.pid"),
        "--appendonly", "yes", "--appendfsync", "always", "--save", "",
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    if replica_of is not None:
        args += ["--replicaof", "127.0.0.1", str(replica_of)]
    return RedisProcess(name, str(directory), port, args)


def sentinel(name: str, directory: Path, master_port: int) -> RedisProcess:
    """A Sentinel; its configuration file is its own (Sentinel rewrites it as it learns)."""
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndaemonize yes\n"
        f"pidfile {directory / 'redis.pid'}\nlogfile {directory / 'sentinel.log'}\n"
        f"dir {directory}\n"
        f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n"
        f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
        f"sentinel failover-timeout {MASTER_NAME} 10000\n"
        f"sentinel parallel-syncs {MASTER_NAME} 1\n"
    )
    return RedisProcess(name, str(directory), port, ["redis-server", str(conf), "--sentinel"])


@dataclass
class Cluster:
    """What ``up`` started: enough for ``down``, and for the tests to break it."""

    directory: str
    nodes: list[str]  # RabbitMQ node names; the first is the one the others joined
    amqp_ports: list[int]
    dist_ports: list[int]
    redis: list[RedisProcess]  # the first master, then its replica
    sentinels: list[RedisProcess]
    master_name: str = MASTER_NAME

    def amqp_url(self, vhost: str = "", order: list[int] | None = None) -> str:
        """The nodes as one kombu failover URL, in ``order`` (indexes; default 0, 1, 2)."""
        ports = [self.amqp_ports[i] for i in (order or range(len(self.nodes)))]
        return ";".join(f"amqp://guest:guest@127.0.0.1:{p}/{vhost}" for p in ports)

    @property
    def redis_url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels) + "/0"

    def env(self) -> dict[str, str]:
        return {
            "AMQP_URL": self.amqp_url(),
            "REDIS_URL": self.redis_url,
            "REDIS_MASTER_NAME": self.master_name,
        }

    def rabbit(self, index: int) -> RabbitNode:
        """Node ``index``, to stop, kill or start again."""
        name = self.nodes[index].split("@")[0]
        directory = Path(self.directory) / name
        return RabbitNode(directory, name, self.amqp_ports[index], self.dist_ports[index])

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel that answers sees it."""
        for s in self.sentinels:
            client = redis.Redis(port=s.port, socket_timeout=1, socket_connect_timeout=1)
            try:
                found: Any = client.sentinel_get_master_addr_by_name(self.master_name)
                return int(found[1])
            except (redis.RedisError, TypeError):
                continue
            finally:
                client.close()
        return None

    def redis_at(self, port: int) -> RedisProcess:
        return next(r for r in self.redis if r.port == port)

    def save(self) -> None:
        path = Path(self.directory) / "cluster.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> Cluster:
        raw = json.loads((directory / "cluster.json").read_text())
        raw["redis"] = [RedisProcess(**r) for r in raw["redis"]]
        raw["sentinels"] = [RedisProcess(**s) for s in raw["sentinels"]]
        return cls(**raw)


def up(directory: Path = DEFAULT_DIR) -> Cluster:
    """Start the cluster under ``directory`` (after a ``down`` of what is left there)."""
    down(directory)
    directory.mkdir(parents=True)
    os.chmod(directory, 0o755)  # the RabbitMQ nodes run as the rabbitmq user
    started = time.monotonic()
    stem = "pubtasks" if directory == DEFAULT_DIR else directory.name
    names = [f"{stem}-c{i + 1}" for i in range(NODES)]
    rabbits = [RabbitNode(directory / name, name) for name in names]
    master = redis_server("redis-master", directory / "redis-a")
    replica = redis_server("redis-replica", directory / "redis-b", replica_of=master.port)
    sentinels = [
        sentinel(f"sentinel-{i + 1}", directory / f"sentinel-{i + 1}", master.port)
        for i in range(SENTINELS)
    ]
    cluster = Cluster(
        str(directory),
        [r.node for r in rabbits],
        [r.port for r in rabbits],
        [r.dist_port for r in rabbits],
        [master, replica],
        sentinels,
    )
    cluster.save()  # before anything starts: a failed start is still cleaned up by down
    try:
        with ThreadPoolExecutor(NODES) as pool:
            # booting three Erlang VMs at once on a loaded machine (a parallel suite) can
            # take minutes
            for _ in pool.map(lambda r: r.start(timeout=180), rabbits):
                pass
        for joining in rabbits[1:]:
            joining.ctl("stop_app")
            joining.ctl("join_cluster", rabbits[0].node)
            joining.ctl("start_app")
            joining.ctl("await_startup")
        master.start()
        replica.start()
        for s in sentinels:
            s.start()
        wait_for(lambda: replica_linked(replica.port), 30, "the replica to sync", 0.1)
        wait_for(lambda: _sentinels_agree(cluster), 30, "the Sentinels to see each other", 0.1)
    except BaseException:
        down(directory)
        raise
    say(f"up in {time.monotonic() - started:.1f} s under {directory}")
    return cluster


def replica_linked(port: int) -> bool:
    """Whether the Redis on ``port`` is a replica whose link to its master is up."""
    client = redis.Redis(port=port, socket_timeout=1, decode_responses=True)
    try:
        info = client.info("replication")
        return info.get("role") == "slave" and info.get("master_link_status") == "up"
    except redis.RedisError:
        return False
    finally:
        client.close()


def redis_whole(cluster: Cluster) -> bool:
    """Whether Sentinel names a master and each other Redis replicates it, in sync.

    A killed master started again usually becomes the new master's replica; when its
    start races the failover it can be made the master again instead (Sentinel fails
    back to it, the promoted one becoming its replica): either is whole."""
    master = cluster.master_port()
    return master is not None and all(
        replica_linked(r.port) for r in cluster.redis if r.port != master
    )


def _sentinels_agree(cluster: Cluster) -> bool:
    """Each Sentinel knows the others and the replica: a failover can happen."""
    for s in cluster.sentinels:
        client = redis.Redis(port=s.port, socket_timeout=1, decode_responses=True)
        try:
            master: Any = client.sentinel_master(cluster.master_name)
            if int(master["num-other-sentinels"]) < SENTINELS - 1 or master["num-slaves"] < 1:
                return False
        except redis.RedisError:
            return False
        finally:
            client.close()
    return True


def down(directory: Path = DEFAULT_DIR) -> None:
    """Stop whatever ``up`` started under ``directory``, and remove it."""
    if not (directory / "cluster.json").exists():
        if directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
        return
    cluster = Cluster.load(directory)
    for process in cluster.sentinels + cluster.redis:
        process.kill()
    for i in range(len(cluster.nodes)):
        node = cluster.rabbit(i)
        node.kill()  # stopping a node of a cluster cleanly can wait on the others
    shutil.rmtree(directory, ignore_errors=True)
    say(f"down: {directory} removed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.split("\n")[0])
    parser.add_argument("action", choices=["up", "down", "env"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="where it all lives")
    args = parser.parse_args(argv)
    if args.action == "down":
        down(args.dir)
        return 0
    cluster = up(args.dir) if args.action == "up" else Cluster.load(args.dir)
    for key, value in cluster.env().items():
        print(f"export {key}='{value}'")
    return 0


if __name__ == "__main__":
    sys.exit(main())
