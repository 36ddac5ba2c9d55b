"""Failovers on a 3-node RabbitMQ cluster with a quorum queue and on Redis with Sentinel.

Each scenario runs two real ``celery -A pubtasks worker -B`` at 0.1 s ticks against
the cluster that ``scripts/cluster up`` starts (its own ports and directory, never
the default RabbitMQ or Redis), breaks one part of it mid-run, and accounts for
every tick the grid made due over the run's own clock (``ledger``): each delivered,
none failed or missing, duplicates with their ``message_id``, the counters'
invariant, and the time from the fault to the next confirm of a tick scheduled
after it. ``scripts/reliability`` records them in docs/reliability.md.

The quorum queue ``text`` is declared through the first node before the workers
start, so that its leader is that node; the workers are given the nodes in the
order 2, 3, 1, so that they connect to the second. Killing the connected node
and stopping the leader are then two different faults.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from pubtasks.bench.services import forget_celery_keys
from pubtasks.bench.waiting import wait_for
from pubtasks.confirms import Delivery
from pubtasks.defaults import DEFAULT_ENTRY
from pubtasks.errors import StatsUnavailable
from pubtasks.stats import Stats
from tests.helpers import (
    Row,
    Worker,
    beat_pid,
    caught_up,
    check,
    clock_of,
    finish,
    record_replication,
    tally,
    write_config,
)
from tests.support.cluster import Cluster, redis_whole
from tests.support.proxy import Proxy

pytestmark = [
    pytest.mark.xdist_group("cluster"),  # one cluster, started once, for the whole module
    pytest.mark.cluster,
    pytest.mark.faults,
    pytest.mark.integration,
    pytest.mark.e2e,
]

ROOT = Path(__file__).resolve().parent.parent
#: Where the tests' cluster lives (PUBTASKS_CLUSTER_DIR: another, for a second cluster on
#: the same machine; its node names follow the directory's name).
CLUSTER_DIR = Path(os.environ.get("PUBTASKS_CLUSTER_DIR", "/tmp/pubtasks-cluster-test"))
INTERVAL = 0.1
QUORUM = "QUEUE_TYPE = 'quorum'\n"
#: Workers connect to the second node; the queue's leader is the first.
ORDER = [1, 2, 0]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """``scripts/cluster up`` under a directory of the tests' own; down afterwards, always."""
    script = str(ROOT / "scripts" / "cluster")
    try:
        for attempt in (1, 2):  # once more if a node did not boot (its log is printed)
            try:
                subprocess.run([script, "up", "--dir", str(CLUSTER_DIR)], check=True, timeout=400)
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise
        yield Cluster.load(CLUSTER_DIR)
    finally:
        subprocess.run([script, "down", "--dir", str(CLUSTER_DIR)], check=False, timeout=300)


def ctl_on_any(cluster: Cluster, *args: str) -> None:
    """``rabbitmqctl ARGS`` on the first node that is running."""
    for i in range(len(cluster.nodes)):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            cluster.rabbit(i).ctl(*args)
            return
    raise RuntimeError(f"no cluster node could run rabbitmqctl {' '.join(args)}")


@pytest.fixture
def vhost(cluster: Cluster) -> Iterator[str]:
    name = f"pubtasks-cluster-{uuid.uuid4().hex[:8]}"
    ctl_on_any(cluster, "add_vhost", name)
    try:
        ctl_on_any(cluster, "set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield name
    finally:
        ctl_on_any(cluster, "delete_vhost", name)


@pytest.fixture
def cluster_stats(cluster: Cluster) -> Iterator[Stats]:
    """The test's counters, read through the Sentinels; every key deleted afterwards."""
    prefix = f"pubtasks-cluster:{uuid.uuid4().hex[:8]}:"
    stats = Stats.from_url(cluster.redis_url, prefix, retries=20)
    try:
        yield stats
    finally:
        stats.clear()
        stats.close()
        forget_celery_keys(cluster.redis_url, prefix)


def declare_on_first_node(cluster: Cluster, vhost: str) -> None:
    """The quorum queue, declared through node 1 so that it leads the queue."""
    x = Exchange("message", type="topic", durable=True)
    q = Queue(
        "text", x, routing_key="example.text", durable=True,
        queue_arguments={"x-queue-type": "quorum"},
    )  # fmt: skip
    with Connection(cluster.amqp_url(vhost, [0])) as conn:
        q(conn.default_channel).declare()


def leader_of(cluster: Cluster, vhost: str) -> str:
    out = cluster.rabbit(0).ctl("list_queues", "-p", vhost, "name", "leader", "--no-table-headers")
    return next(line.split()[1] for line in out.splitlines() if line.startswith("text"))


class Stalls:
    """Samples the acked counter every 10 ms in a thread: how long confirms stopped."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stalls:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(StatsUnavailable):
                self.samples.append((time.time(), self.stats.snapshot().totals.acked))
            self.stop.wait(0.01)

    def longest(self, since: float) -> float:
        """The longest time from ``since`` on between two increases of ``acked``."""
        last_change, last, longest = since, None, 0.0
        for at, acked in self.samples:
            if last is not None and acked > last:
                longest = max(longest, at - last_change)
                last_change = max(at, since)
            last = acked
        return longest


def last_number(stats: Stats) -> int:
    """The number of the latest tick beat allocated (once Redis answers)."""
    result: list[int] = []

    def read() -> bool:
        with contextlib.suppress(StatsUnavailable):
            result.append(stats.snapshot().last_message_number)
            return True
        return False

    wait_for(read, 60, "Redis to answer", 0.01)
    return result[0]


@dataclass
class Timing:
    recovery_s: float  # from the part being down to the next tick confirmed
    sentinel_s: float | None = None  # from the kill to Sentinel naming the new master


def confirmed_after(stats: Stats, number: int) -> bool:
    """A tick numbered after ``number`` has been confirmed (False while Redis is away)."""
    try:
        return (stats.snapshot().totals.last_confirmed_number or 0) > number
    except StatsUnavailable:
        return False


def measure(
    cluster: Cluster,
    stats: Stats,
    fast: Stats,
    name: str,
    fault: Callable[[], Callable[[], None]],
    mends: list[Callable[[], None]],
    watch_sentinel: bool,
) -> Timing:
    """Break something (``fault()``, whose mend goes into ``mends``) and time the recovery:
    from the part being down to the first confirm of a tick numbered after it went down
    (after it was killed, for Redis, whose numbers cannot be read while it is away).
    ``fast`` reads Redis without retrying, so that a dead master never stops the clock."""
    master = cluster.master_port() if watch_sentinel else None
    before = last_number(stats)
    mends.append(fault())
    fault_at = time.time()  # the part is down (a stop takes a while; a kill does not)
    if not watch_sentinel:
        before = last_number(stats)
    sentinel_s: float | None = None

    def recovered() -> bool:
        nonlocal sentinel_s  # noted on the way: when the Sentinels named a new master
        if watch_sentinel and sentinel_s is None and cluster.master_port() != master:
            sentinel_s = time.time() - fault_at
        return confirmed_after(fast, before)

    wait_for(recovered, 120, f"{name}: a tick confirmed after the fault", 0.01)
    recovery = time.time() - fault_at
    if watch_sentinel and sentinel_s is None:
        wait_for(lambda: cluster.master_port() != master, 60, "Sentinel's failover", 0.01)
        sentinel_s = time.time() - fault_at
    return Timing(round(recovery, 3), None if sentinel_s is None else round(sentinel_s, 3))


def run_scenario(
    cluster: Cluster,
    vhost: str,
    stats: Stats,
    tmp_path: Path,
    name: str,
    fault: Callable[[], Callable[[], None]],
    watch_sentinel: bool = False,
    amqp_url: str | None = None,
) -> tuple[Row, Timing]:
    """Two -B workers at 0.1 s; ``fault()`` breaks something and returns how to mend it.

    The workers are given the nodes in ``ORDER``, or ``amqp_url``."""
    declare_on_first_node(cluster, vhost)
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        "AMQP_URL": amqp_url or cluster.amqp_url(vhost, ORDER),
        "REDIS_URL": cluster.redis_url,
        "REDIS_MASTER_NAME": cluster.master_name,
        "PUBLISH_INTERVAL": str(INTERVAL),
        "PYTHONUNBUFFERED": "1",
    }
    prefix = stats.keys.prefix
    workers = []
    for letter in ("a", "b"):
        (tmp_path / letter).mkdir()
        write_config(tmp_path / letter, prefix, QUORUM)
        workers.append(Worker(tmp_path / letter, dict(env), name=f"cluster-{letter}"))
    write_config(tmp_path, prefix, QUORUM)  # for finish()
    mends: list[Callable[[], None]] = []
    try:
        for w in workers:
            w.start()
        wait_for(lambda: stats.snapshot().totals.acked >= 30, 90, "the first 30 acks", 0.1)
        fast = Stats.from_url(cluster.redis_url, prefix, retries=0)
        with Stalls(fast) as stalls:  # from the fault until 30 more acks
            started = time.time()
            timing = measure(cluster, stats, fast, name, fault, mends, watch_sentinel)
            after = stats.snapshot().totals.acked
            wait_for(lambda: stats.snapshot().totals.acked >= after + 30, 60, "30 acks", 0.1)
        fast.close()
        longest = stalls.longest(started)
        mends.pop()()
        wait_for(lambda: stats.snapshot().totals.acked >= after + 60, 60, "30 more acks", 0.1)
        stop_caught_up(workers, stats)
        for w in workers:
            assert ":guest@" not in w.log  # every URL of the ';' list is masked
    finally:
        while mends:
            mends.pop()()
        for w in workers:
            w.stop()
    queued = finish(tmp_path, env, stats, resend=True)  # ticks lost with a master, too
    for w in workers:  # shown if the test fails: what each beat did, and when
        print(f"-- {w.cwd.name}'s WARNING and ERROR lines:")
        print(
            "\n".join(
                line for line in w.log.splitlines() if "WARNING/" in line or "ERROR/" in line
            )[-6000:]
        )
    notes = f"longest time without a confirm: {longest:.2f} s"
    if timing.sentinel_s is not None:
        notes += f"; Sentinel's own failover: {timing.sentinel_s:.2f} s"
    row = tally(
        name, cluster.amqp_url(vhost), stats, clock_of(*workers), timing.recovery_s, notes,
        queued, interval=INTERVAL,
    )  # fmt: skip
    return row, timing


def stop_caught_up(workers: list[Worker], stats: Stats) -> float:
    """Stop ``workers``, each cleanly, once beat has caught up; return when the stop began.

    A beat that held its ticks through a fault (no replica acknowledged their numbers,
    for up to REPLICA_GRACE) may still be catching up when the scenario has seen enough
    acks. Stopped then, it leaves ticks due seconds before the stop to the next start,
    which a scenario does not have (``finish`` runs no beat): they would count missing."""
    wait_for(lambda: caught_up(stats), 60, "beat to catch up", 0.05)
    stop_at = time.time()
    for w in workers:
        assert w.stop() == 0, w.log[-3000:]
    return stop_at


def restart_node(cluster: Cluster, index: int) -> Callable[[], None]:
    def mend() -> None:
        node = cluster.rabbit(index)
        node.start()
        wait_for(lambda: _running_nodes(cluster) == len(cluster.nodes), 60, "3 nodes", 0.2)

    return mend


def _running_nodes(cluster: Cluster) -> int:
    try:
        out = cluster.rabbit(0).ctl("eval", "length(rabbit_nodes:all_running()).")
        return int(out.strip())
    except (subprocess.SubprocessError, OSError, ValueError):
        return 0


def test_sigkill_of_the_node_the_workers_are_connected_to(
    cluster: Cluster, vhost: str, cluster_stats: Stats, tmp_path: Path
) -> None:
    connected = ORDER[0]

    def fault() -> Callable[[], None]:
        cluster.rabbit(connected).kill()
        return restart_node(cluster, connected)

    row, _ = run_scenario(
        cluster, vhost, cluster_stats, tmp_path,
        "cluster: RabbitMQ node the workers are connected to SIGKILLed (quorum queue)", fault,
    )  # fmt: skip
    check(row)


def test_a_silent_network_cut_to_the_node_the_workers_are_connected_to(
    cluster: Cluster, vhost: str, cluster_stats: Stats, tmp_path: Path
) -> None:
    # Given workers that reach their first node through a proxy the test can cut
    proxy = Proxy(("127.0.0.1", cluster.amqp_ports[ORDER[0]]))
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/{vhost};" + cluster.amqp_url(vhost, ORDER[1:])

    def fault() -> Callable[[], None]:
        proxy.cut()  # bytes dropped both ways: no FIN, no RST, as a dead network
        return proxy.restore

    try:
        row, _ = run_scenario(
            cluster, vhost, cluster_stats, tmp_path,
            "cluster: network to the connected RabbitMQ node cut silently "
            "(CONFIRM_TIMEOUT=2 s)", fault, amqp_url=url,
        )  # fmt: skip
    finally:
        proxy.close()
    check(row)


def test_stopping_the_node_that_leads_the_quorum_queue(
    cluster: Cluster, vhost: str, cluster_stats: Stats, tmp_path: Path
) -> None:
    def fault() -> Callable[[], None]:
        leader = leader_of(cluster, vhost)
        index = cluster.nodes.index(leader)
        assert index != ORDER[0], "the leader is the connected node: not this scenario"
        cluster.rabbit(index).ctl("stop")
        return restart_node(cluster, index)

    row, _ = run_scenario(
        cluster, vhost, cluster_stats, tmp_path,
        "cluster: the node leading the quorum queue stopped", fault,
    )  # fmt: skip
    check(row)


def test_sigkill_of_the_redis_master_sentinel_promotes_the_replica(
    cluster: Cluster, vhost: str, cluster_stats: Stats, tmp_path: Path
) -> None:
    def fault() -> Callable[[], None]:
        return kill_master(cluster)

    row, timing = run_scenario(
        cluster, vhost, cluster_stats, tmp_path,
        "cluster: Redis master SIGKILLed, Sentinel promotes the replica", fault,
        watch_sentinel=True,
    )  # fmt: skip
    assert timing.sentinel_s is not None
    check(row)


class Writer:
    """Counts one publish after another, as fast as Redis takes them, in a thread; keeps
    how many Redis acknowledged to it and how long each took."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.acknowledged = 0
        self.errors = 0
        self.error = ""
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            delivery = Delivery(f"e@{n}#w.{n}", f"e@{n}", "e", n)
            started = time.perf_counter()
            try:
                self.stats.begin([delivery], time.time())
            except StatsUnavailable as exc:
                self.errors += 1  # not acknowledged: it may or may not be there
                self.error = str(exc)
                continue
            self.latencies.append(time.perf_counter() - started)
            self.acknowledged += 1


def kill_master(cluster: Cluster) -> Callable[[], None]:
    port = cluster.master_port()
    assert port is not None
    old = cluster.redis_at(port)
    old.kill()

    def mend() -> None:
        old.start()  # Sentinel makes it a replica (or, racing the failover, the master)
        wait_for(lambda: redis_whole(cluster), 60, "a master and its replica in sync", 0.2)

    return mend


def kill_master_alone(cluster: Cluster, prefix: str, seconds: float) -> Callable[[], None]:
    """Cut the replica off (SIGSTOP, then the master drops its link), let the master go
    on alone for ``seconds`` of ticks, then SIGKILL it and let the replica go: Sentinel
    promotes a replica that never saw what the master took alone. (Stopped without the
    cut, the replica would still read it from its socket's buffer.)

    "Alone for ``seconds``": either beat's latest tick sent (``beat:last`` on the master)
    is that old, beat holding its ticks, or the master gave 15 numbers that only it
    holds, beat going on without the replica (what pubtasks did before issue 22)."""
    port = cluster.master_port()
    assert port is not None
    replica = next(r for r in cluster.redis if r.port != port)
    pid = replica.pid()
    assert pid is not None
    master = redis.Redis(port=port, socket_timeout=5, decode_responses=True)
    totals, last = f"{prefix}totals", f"{prefix}beat:last:{DEFAULT_ENTRY}"
    os.kill(pid, signal.SIGSTOP)
    try:
        master.client_kill_filter(_type="slave")  # redis-py's name for a replica
        base = int(master.hget(totals, "last_message_number") or 0)

        def alone() -> bool:
            numbered = int(master.hget(totals, "last_message_number") or 0) - base
            return numbered >= 15 or time.time() - float(master.get(last) or 0) >= seconds

        wait_for(alone, 30, f"{seconds:g} s of ticks on the master alone", 0.02)
        return kill_master(cluster)
    finally:
        master.close()
        os.kill(pid, signal.SIGCONT)


def test_no_number_is_given_twice_nor_a_tick_lost_when_a_failover_loses_writes(
    cluster: Cluster, vhost: str, cluster_stats: Stats, tmp_path: Path
) -> None:
    """issue 22: the cluster chaos hour gave 252 numbers to two ticks after master kills,
    and master kills alone lost ticks: what the master took alone went with it.

    The replica stops (the Sentinels soon see it down), the master goes on without it
    for 2 s of ticks, then dies, and the replica, back, is promoted: a second failure,
    which loses what the master took alone. With no replica up, the Sentinels settle
    on the master, so beat numbers ticks there (``store.Replication``); what must
    hold then is the rest of the defence: the numbers beat gave lift the next ones
    (the floor), a tick fired again keeps its numbers, and the sent ticks' records
    are written again. The ledger finds every due tick delivered, no number under two
    message ids and none lost."""

    def fault() -> Callable[[], None]:
        return kill_master_alone(cluster, cluster_stats.keys.prefix, 2.0)

    row, timing = run_scenario(
        cluster, vhost, cluster_stats, tmp_path,
        "cluster: Redis master SIGKILLed after 2 s without its replica", fault,
        watch_sentinel=True,
    )  # fmt: skip
    assert timing.sentinel_s is not None
    check(row)


@pytest.mark.parametrize("wait", [1, 0], ids=["wait-1", "wait-0"])
def test_counts_a_replica_acknowledged_survive_a_master_kill(
    cluster: Cluster, cluster_stats: Stats, wait: int
) -> None:
    # Given a writer counting publishes through the Sentinels, waiting for `wait` replicas
    prefix = f"{cluster_stats.keys.prefix}wait{wait}:"
    stats = Stats.from_url(cluster.redis_url, prefix, retries=30, wait_replicas=wait)
    writer = Writer(stats)
    mends = []
    try:
        writer.thread.start()
        wait_for(lambda: writer.acknowledged >= 2000, 60, "2000 counted writes", 0.01)
        steady = sorted(writer.latencies)
        # When the master is SIGKILLed mid-stream, and Sentinel promotes the replica
        mends.append(kill_master(cluster))
        done = writer.acknowledged
        wait_for(lambda: writer.acknowledged >= done + 500, 60, "500 writes after", 0.05)
    finally:
        writer.stop.set()
        writer.thread.join(60)
        while mends:
            mends.pop()()
    # Then every write Redis acknowledged to the writer is there, on the new master,
    # when it waited for a replica; without waiting, some may not be (it is recorded)
    counted = stats.snapshot().totals.published
    lost = max(0, writer.acknowledged - counted)  # acknowledged, and gone with the master
    stats.clear()
    stats.close()
    assert writer.errors == 0, writer.error  # redis-py's retries reach the new master
    if wait:
        assert lost == 0
    record_replication(
        {
            "kind": "replication",
            "wait_replicas": wait,
            "acknowledged": writer.acknowledged,
            "lost": lost,
            "write_p50_ms": round(1000 * steady[len(steady) // 2], 3),
            "write_p99_ms": round(1000 * steady[int(len(steady) * 0.99)], 3),
        }
    )


def test_pubtasks_stats_reads_the_counters_through_the_sentinels(
    cluster: Cluster, cluster_stats: Stats, tmp_path: Path
) -> None:
    cluster_stats.begin([Delivery("e@1#t.1", "e@1", "e", 1)], time.time())
    env = {"PATH": "/usr/bin:/bin", **cluster.env()}
    out = subprocess.run(
        [str(Path(sys.executable).with_name("pubtasks")), "stats", "--json",
         "--prefix", cluster_stats.keys.prefix],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    shown = json.loads(out.stdout)
    assert (shown["published"], shown["pending"], shown["invariant_holds"]) == (1, 1, True)


class Arrivals:
    """What RabbitMQ delivers from the queue ``text``, consumed in a thread for the whole
    run: each message's ``message_id`` and when it arrived."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.got: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Arrivals:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def _run(self) -> None:
        def on_message(_: object, message: Any) -> None:
            self.got.append((time.time(), str(message.properties["message_id"])))

        with Connection(self.url) as conn:
            queue = Queue("text", no_declare=True)
            with conn.Consumer(queue, callbacks=[on_message], no_ack=True, accept=["json"]):
                while not self.stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        conn.drain_events(timeout=0.2)

    def ticks(self) -> list[tuple[float, int]]:
        """(arrival, scheduled time in ms) of each tick of the schedule received."""
        return [(at, int(mid.rsplit("@", 1)[1])) for at, mid in list(self.got) if "@m" not in mid]


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def reserved_ticks(client: Any, prefix: str) -> set[int]:
    """The scheduled times (ms) of the ticks in Celery's ``unacked`` hash (reserved)."""
    found = set()
    for value in client.hvals(f"{prefix}unacked"):
        message = json.loads(value)[0]  # kombu keeps [message, exchange, routing key]
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        for tick in kwargs.get("ticks") or [kwargs]:  # a group's ticks, or a tick alone
            found.add(round(float(tick["scheduled_at"]) * 1000))
    return found


def default_worker(directory: Path, env: dict[str, str], prefix: str) -> Worker:
    """A -B worker with Celery's defaults: remote control, mingle and gossip on."""
    directory.mkdir()
    write_config(directory, prefix, QUORUM)
    with (directory / "celeryconfig.py").open("a") as config:
        config.write("worker_enable_remote_control = True\n")
    worker = Worker(directory, dict(env), name=f"sentinel-{directory.name}")
    worker.args = [a for a in worker.args if a not in ("--without-mingle", "--without-gossip")]
    return worker


def hold_one_tick(worker: Worker) -> list[int]:
    """SIGSTOP the worker's pool processes (not its beat), and return their pids once
    Celery has given one of them a tick, which it holds, reserved and unacked, with one
    more tick of credit (prefetch 2): its next BRPOP is in flight. That is the state in
    which kombu's transport crashed (pubtasks/transport.py)."""
    assert worker.proc is not None
    since = len(worker.log)
    pool = [p for p in children(worker.proc.pid) if p != beat_pid(worker)]
    for pid in pool:
        os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: " received" in worker.log[since:], 10, "a tick held", 0.002)
    return pool


def account_for_grid(arrivals: Arrivals, due: set[int], held: set[int]) -> dict[str, Any]:
    """Check that every due tick and every reserved one was received; the counts."""
    ticks = arrivals.ticks()
    received = {ms for _, ms in ticks}
    missing = sorted(due - received)
    assert not missing, f"{len(missing)} of {len(due)} due ticks never reached RabbitMQ: {missing}"
    assert held <= received, f"reserved ticks never delivered: {sorted(held - received)}"
    return {
        "kind": "redis-failover-reserved",
        "reserved_at_kill": len(held),
        "due": len(due),
        "received": len(ticks),
        "duplicates": len(ticks) - len(received),
    }


def test_sigkill_of_the_redis_master_while_the_workers_hold_reserved_ticks(
    cluster: Cluster, vhost: str, cluster_stats: Stats, tmp_path: Path
) -> None:
    """issue 22: kombu's Redis transport stopped both workers here (pubtasks/transport.py).

    Two -B workers at 0.2 s, with Celery's defaults (remote control, mingle, gossip),
    one of them holding two reserved ticks (its pool stopped) when the Redis master is
    SIGKILLed. Every tick due on the schedule's grid during the run must be received
    from RabbitMQ, the reserved ones included; the workers must stay up. The time from
    Sentinel's promotion to the first tick scheduled after the kill arriving is recorded.
    """
    interval = 0.2
    declare_on_first_node(cluster, vhost)
    env = {
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        **cluster.env(),
        "AMQP_URL": cluster.amqp_url(vhost, ORDER),
        "PUBLISH_INTERVAL": str(interval),
        "PYTHONUNBUFFERED": "1",
    }
    prefix = cluster_stats.keys.prefix
    workers = [default_worker(tmp_path / letter, env, prefix) for letter in ("a", "b")]
    write_config(tmp_path, prefix, QUORUM)  # for finish()
    fast = Stats.from_url(cluster.redis_url, prefix, retries=0)
    stopped: list[int] = []
    mends: list[Callable[[], None]] = []
    try:
        with Arrivals(cluster.amqp_url(vhost)) as arrivals:
            for w in workers:
                w.start()
            wait_for(lambda: len(arrivals.got) >= 30, 120, "the first 30 ticks", 0.1)
            # Given worker a holding a reserved tick, and its next BRPOP in flight
            stopped = hold_one_tick(workers[0])
            held = reserved_ticks(fast.client, prefix)
            assert held, "no tick reserved at the kill: the scenario did not happen"
            # When the Redis master is SIGKILLed, and Sentinel promotes the replica
            master = cluster.master_port()
            mends.append(kill_master(cluster))
            killed_at = time.time()
            wait_for(lambda: cluster.master_port() != master, 60, "Sentinel's failover", 0.01)
            promoted_at = time.time()
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)
            stopped = []

            def resumed() -> float:
                after = [at for at, ms in arrivals.ticks() if ms / 1000 > killed_at]
                return min(after) if after else 0.0

            first_after = wait_for(resumed, 120, "a tick scheduled after the kill", 0.05)
            count = len(arrivals.got)
            wait_for(lambda: len(arrivals.got) >= count + 30, 60, "30 more ticks", 0.1)
            # Then both workers are still up, and stop cleanly
            for w in workers:
                assert w.proc is not None and w.proc.poll() is None, w.log[-3000:]
            stop_at = stop_caught_up(workers, cluster_stats)
            finish(tmp_path, env, cluster_stats)  # what is still queued in Redis, published
            step = round(interval * 1000)
            first = min(ms for _, ms in arrivals.ticks())
            due = set(range(first, round((stop_at - 1.0) * 1000) + 1, step))
            with contextlib.suppress(TimeoutError):  # the last ones, on their way to us
                wait_for(lambda: due <= {ms for _, ms in arrivals.ticks()}, 10, "due", 0.1)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for w in workers:
            w.stop()
        while mends:
            mends.pop()()
        fast.close()
    for w in workers:
        assert "Unrecoverable error" not in w.log, w.log[-3000:]
    # And every tick due on the grid, from the first received to the stop, was received,
    # the reserved ones too
    figures = {
        **account_for_grid(arrivals, due, held),
        "sentinel_s": round(promoted_at - killed_at, 3),
        "resume_after_promotion_s": round(first_after - promoted_at, 3),
    }
    print(figures)
    record_replication(figures)
