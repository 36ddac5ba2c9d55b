"""``scripts/chaos``: random faults against two ``-B`` workers, then an account of
every tick that was due.

Two set-ups, each of its own and on free ports (never the default RabbitMQ or Redis):

- by default, a RabbitMQ node and a Redis (append-only, fsynced) (``nodes``);
- with ``--cluster``, ``scripts/cluster``'s three RabbitMQ nodes, with the queue
  ``text`` a quorum queue, and a Redis master, its replica and three Sentinels,
  under ``--dir`` (``cluster``). Each worker reaches each node through a TCP proxy
  of its own (``proxy``), so that the network to a node can be cut silently.

Two ``celery -A pubtasks worker -B`` run at ``--interval`` (0.1 s) and then,
every 5 to 15 s, one fault drawn at random:

- ``close``: RabbitMQ closes every connection;
- ``stop_app``: RabbitMQ's app stopped for 2 to 6 s (on one node of the cluster);
- ``redis_kill`` (one node): Redis SIGKILLed, then started again from its AOF;
- ``node_kill``, ``leader_kill`` (cluster): a node, or the node leading the quorum
  queue, SIGKILLed;
- ``node_stop`` (cluster): a node stopped (``rabbitmqctl stop``) for 5 to 15 s,
  then started again, as an operator restarting it would;
- ``redis_master_kill`` (cluster): the Redis master SIGKILLed; Sentinel promotes
  the replica;
- ``net_cut`` (cluster): the network to one node cut silently (no FIN, no RST)
  for 2 to 8 s;
- ``pool_kill``: a pool process of a worker SIGKILLed;
- ``beat_kill``: a worker's embedded beat SIGKILLed (the worker exits 3);
- ``worker_kill``: a whole worker SIGKILLed (its process group);
- ``worker_term``: a worker stopped with SIGTERM (a warm shutdown).

A fault on the cluster waits until it is whole again (three nodes running, the
replica in sync): one of three nodes down is what a quorum survives, two is not.
It plays the supervisor, and restarts only what a supervisor would: a worker
that exits (a second later), a RabbitMQ node or a Redis that was killed (2 s
later; the old master comes back as a replica). After ``--minutes`` it waits
until no tick has been reserved for more than 30 s (a tick stranded by a dead
worker), stops the workers, lets a worker without beat publish what is still
queued (as the next start would), and accounts for every tick the schedule made
due between its own start and stop of the workers (``ledger``): delivered,
failed with its reason, skipped with its reason, or missing.

The verdict (exit 1, the run's directory kept, the missing ids printed): a due
tick missing; any tick failed or skipped (no fault here is one that a tick should
fail or be skipped for); a number lost or under two ids; a tick stranded or left
in Redis; the counters' invariant broken; a worker that exited other than as the
fault done to it makes it (3 after a beat kill, -9 after a SIGKILL, 0 after a
SIGTERM, or -15 if it had not said it was ready; 1 after a pool kill while it started,
as its log says: ``POOL_LOST_AT_START``),
or that did not stop cleanly at the end. The seed is printed first:
``--seed`` replays a run's faults, in the same order. The record is stamped with
the commit it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pubtasks.bench.waiting import wait_for
from pubtasks.bench.worker import Worker, write_config
from pubtasks.defaults import DEFAULT_ENTRY
from pubtasks.keys import COUNTERS
from pubtasks.schedule import every
from pubtasks.stats import Stats
from tests.support import cluster as clusters
from tests.support.ledger import Clock, Expected, Ledger, account, take
from tests.support.ledger import verdict as ledger_verdict
from tests.support.nodes import RabbitNode, RedisNode
from tests.support.proxy import Proxy

PREFIX = "chaos:"
CONFIG = """
from pubtasks.schedule import every

beat_schedule = {"publish-text": {"task": "pubtasks.publish", "schedule": every()}}
CONFIRM_TIMEOUT = 2.0
"""
QUORUM = "QUEUE_TYPE = 'quorum'\n"
#: ``--entries N``: N entries instead of the example's one, all due at the same instants.
ENTRIES = """
beat_schedule = {{
    f"e{{i:05d}}": {{"task": "pubtasks.publish", "schedule": every()}} for i in range({n})
}}
"""


def entry_names(entries: int) -> list[str]:
    """The entries of a run: the example's one, or ``--entries`` of them."""
    return [DEFAULT_ENTRY] if entries == 0 else [f"e{i:05d}" for i in range(entries)]


WORKER_FAULTS = ("pool_kill", "beat_kill", "worker_kill", "worker_term")
FAULTS = ("close", "stop_app", "redis_kill", *WORKER_FAULTS)
CLUSTER_FAULTS = (
    "close",
    "stop_app",
    "node_kill",
    "leader_kill",
    "node_stop",
    "redis_master_kill",
    "net_cut",
    *WORKER_FAULTS,
)
#: The exit status each fault makes a worker exit with (the embedded beat's death: 3).
CAUSED = {"beat_kill": 3, "worker_kill": -signal.SIGKILL, "worker_term": 0}
#: A pool process killed before the worker's loop first runs makes Celery exit 1 with
#: this in its log (``celery.worker.loops.asynloop``: billiard's ``did_start_ok``); any
#: other pool kill leaves the worker running. CI's loaded machine once took 4 s
#: from a restart to that point, and a pool_kill fell inside it.
POOL_LOST_AT_START = "Could not start worker processes"
#: What a worker logs once it is up; Celery has put its SIGTERM handler (a warm
#: shutdown, exit 0) in place before. A SIGTERM sent earlier (CI once sent one a few
#: ms after a restart) may find Python's default action: death by SIGTERM (-15).
READY = " ready."
#: A tick reserved longer than this at the end was stranded (a live worker's takes ms).
STRANDED_AFTER = 30.0
#: A supervisor starts a killed RabbitMQ node or Redis again this long after.
RESTART_DELAY = 2.0
DEFAULT_DIR = Path("/tmp/pubtasks-cluster-chaos")
ROOT = Path(__file__).resolve().parents[2]


def say(line: str) -> None:
    print(f"chaos {time.strftime('%H:%M:%S')} {line}", flush=True)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == pid:
                    found.append(int(entry.name))
    return found


def beat_of(worker: Worker) -> int | None:
    """The pid of the embedded beat that ``worker`` runs now, once it has said it.

    Read from what this run of the worker wrote: after a restart, the line of the run
    before names a beat that is gone, and the new beat would pass for a pool process."""
    marker = "watching the embedded beat (pid "
    log = worker.current_log
    at = log.rfind(marker)
    return None if at < 0 else int(log[at + len(marker) :].split(")", 1)[0])


def commit() -> str:
    """The commit this runs on (``+dirty`` if tracked files differ from it)."""
    try:
        sha = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "HEAD"],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


@dataclass
class Exit:
    worker: str
    code: int
    caused: bool  # by a fault done to that worker (see CAUSED)


@dataclass
class Supervisor:
    """Starts a worker again a second after it exits, as compose's ``restart:`` would,
    and notes whether a fault done to it explains the exit."""

    workers: list[Worker]
    exits: list[Exit] = field(default_factory=list)
    caused: dict[str, set[int]] = field(default_factory=dict)
    pool_killed: set[str] = field(default_factory=set)  # since each worker's last start
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: bool = False

    def expect(self, worker: Worker, fault: str) -> None:
        if fault == "pool_kill":
            self.pool_killed.add(worker.cwd.name)
            return
        codes = self.caused.setdefault(worker.cwd.name, set())
        codes.add(CAUSED[fault])
        if fault == "worker_term" and READY not in worker.current_log:
            codes.add(-signal.SIGTERM)  # maybe before Celery's handler: the default action

    def explained(self, worker: Worker, code: int) -> bool:
        """Whether a fault done to ``worker`` since its last start explains its exit."""
        name = worker.cwd.name
        pool_killed = name in self.pool_killed
        self.pool_killed.discard(name)
        if code in self.caused.pop(name, set()):
            return True
        return code == 1 and pool_killed and POOL_LOST_AT_START in worker.current_log

    def look(self) -> None:
        with self.lock:
            if self.stopping:
                return
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    code = w.proc.returncode
                    caused = self.explained(w, code)
                    self.exits.append(Exit(w.cwd.name, code, caused))
                    why = "" if caused else " (no fault done to it explains that)"
                    say(f"worker {w.cwd.name} exited {code}{why}; starting it again")
                    time.sleep(1)
                    with contextlib.suppress(ProcessLookupError):  # what it left behind
                        os.killpg(w.proc.pid, signal.SIGKILL)
                    w.start()

    def run(self, until: Callable[[], bool]) -> None:
        while not until():
            self.look()
            time.sleep(0.2)


class Setup(Protocol):
    """The services a run breaks: one RabbitMQ node and a Redis, or the cluster."""

    faults: tuple[str, ...]
    config: str

    @property
    def redis_url(self) -> str: ...
    @property
    def master_name(self) -> str: ...
    def amqp_url(self, worker: int) -> str: ...
    def consume_url(self) -> str: ...
    def inflict(self, fault: str, rng: random.Random) -> str: ...
    def settle(self) -> None: ...


@dataclass
class Single:
    """A RabbitMQ node and a Redis of the run's own."""

    rabbit: RabbitNode
    redis: RedisNode
    faults: tuple[str, ...] = FAULTS
    config: str = CONFIG
    app_stopped: bool = False

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def master_name(self) -> str:
        return "mymaster"  # not used: REDIS_URL names Redis itself

    def amqp_url(self, worker: int) -> str:
        return self.rabbit.url()

    def consume_url(self) -> str:
        return self.rabbit.url()

    def inflict(self, fault: str, rng: random.Random) -> str:
        if fault == "close":
            self.rabbit.ctl("close_all_connections", "chaos: forced close")
            return "RabbitMQ closed every connection"
        if fault == "stop_app":
            seconds = rng.uniform(2, 6)
            self.rabbit.ctl("stop_app")
            self.app_stopped = True
            time.sleep(seconds)
            self.rabbit.ctl("start_app")
            self.app_stopped = False
            return f"RabbitMQ's app stopped for {seconds:.1f} s"
        if fault == "redis_kill":
            self.redis.kill()
            self.redis.start()
            return "Redis SIGKILLed and started again from its AOF"
        raise ValueError(fault)

    def settle(self) -> None:
        if self.app_stopped:
            self.rabbit.ctl("start_app")


@contextlib.contextmanager
def single(root: Path) -> Iterator[Single]:
    rabbit = RabbitNode(root / "rabbit", f"pubtasks-chaos-{os.getpid()}")
    redis_node = RedisNode(root / "redis")
    try:
        rabbit.start()
        redis_node.start()
        yield Single(rabbit, redis_node)
    finally:
        redis_node.kill()
        rabbit.stop()


class Mends:
    """What the supervisor is starting again in the background (killed nodes, Redis)."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self, what: str, restart: Callable[[], None]) -> None:
        def run() -> None:
            time.sleep(RESTART_DELAY)
            try:
                restart()
                say(f"supervisor: {what} started again")
            except Exception as exc:  # reported in the verdict, not lost in a thread
                self.errors.append(f"{what} did not start again: {exc}")
                say(f"supervisor: {what} did not start again: {exc}")

        thread = threading.Thread(target=run, name=f"mend {what}", daemon=True)
        self.threads.append(thread)
        thread.start()

    @property
    def busy(self) -> bool:
        self.threads = [t for t in self.threads if t.is_alive()]
        return bool(self.threads)

    def join(self, timeout: float) -> None:
        for t in self.threads:
            t.join(timeout)


@dataclass
class OnCluster:
    """``scripts/cluster``'s cluster, each node behind a proxy that can cut it silently."""

    cluster: clusters.Cluster
    proxies: list[Proxy]
    mends: Mends = field(default_factory=Mends)
    faults: tuple[str, ...] = CLUSTER_FAULTS
    config: str = CONFIG + QUORUM
    app_stopped: int | None = None

    @property
    def redis_url(self) -> str:
        return self.cluster.redis_url

    @property
    def master_name(self) -> str:
        return self.cluster.master_name

    def amqp_url(self, worker: int) -> str:
        """Worker ``worker``'s URL: every node, through its proxy, from a node of its own."""
        n = len(self.proxies)
        order = [(worker + i) % n for i in range(n)]
        return ";".join(f"amqp://guest:guest@127.0.0.1:{self.proxies[i].port}/" for i in order)

    def consume_url(self) -> str:
        return self.cluster.amqp_url()

    def node(self, index: int) -> RabbitNode:
        return self.cluster.rabbit(index)

    def running(self) -> int:
        for i in range(len(self.cluster.nodes)):
            with contextlib.suppress(subprocess.SubprocessError, OSError, ValueError):
                out = self.node(i).ctl("eval", "length(rabbit_nodes:all_running()).", timeout=20)
                return int(out.strip())
        return 0

    def whole(self) -> bool:
        """Three nodes running, Redis's master and a replica in sync, nothing restarting."""
        if self.mends.busy or self.running() != len(self.cluster.nodes):
            return False
        return clusters.redis_whole(self.cluster)

    def leader(self) -> int:
        for i in range(len(self.cluster.nodes)):
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                out = self.node(i).ctl("list_queues", "name", "leader", "--no-table-headers")
                for line in out.splitlines():
                    name, _, node = line.partition("\t")
                    if name.strip() == "text":
                        return self.cluster.nodes.index(node.strip())
        raise RuntimeError("no node names the leader of queue 'text'")

    def restart_node(self, index: int) -> None:
        node = self.node(index)
        node.start()
        wait_for(lambda: self.running() == len(self.cluster.nodes), 120, "3 running nodes", 0.5)

    def inflict(self, fault: str, rng: random.Random) -> str:
        if fault == "close":
            for i in range(len(self.cluster.nodes)):
                with contextlib.suppress(subprocess.SubprocessError, OSError):
                    self.node(i).ctl("close_all_connections", "chaos: forced close")
            return "every node closed every connection"
        if fault == "net_cut":
            index, seconds = rng.randrange(len(self.proxies)), rng.uniform(2, 8)
            self.proxies[index].cut()
            time.sleep(seconds)
            self.proxies[index].restore()
            return f"network to node {index + 1} cut silently for {seconds:.1f} s"
        # The rest takes a part of the cluster down: only one at a time.
        index, seconds = rng.randrange(len(self.cluster.nodes)), rng.uniform(2, 6)
        if fault == "node_stop":
            seconds = rng.uniform(5, 15)
        if not self.whole():
            return "the cluster is not whole yet (a part is down or restarting): nothing done"
        if fault == "stop_app":
            self.node(index).ctl("stop_app")
            self.app_stopped = index
            time.sleep(seconds)
            self.node(index).ctl("start_app")
            self.app_stopped = None
            return f"node {index + 1}'s app stopped for {seconds:.1f} s"
        if fault in ("node_kill", "leader_kill"):
            if fault == "leader_kill":
                index = self.leader()
            self.node(index).kill()
            self.mends.start(f"node {index + 1}", lambda i=index: self.restart_node(i))  # type: ignore[misc]
            what = "the quorum queue's leader, node" if fault == "leader_kill" else "node"
            return f"{what} {index + 1} SIGKILLed"
        if fault == "node_stop":
            self.node(index).ctl("stop")
            time.sleep(seconds)
            self.restart_node(index)
            return f"node {index + 1} stopped for {seconds:.1f} s, then started again"
        if fault == "redis_master_kill":
            port = self.cluster.master_port()
            if port is None:
                return "no Sentinel named a master: nothing done"
            old = self.cluster.redis_at(port)
            old.kill()

            def restart() -> None:
                old.start()  # Sentinel makes it a replica (or, racing, the master again)
                wait_for(lambda: clusters.redis_whole(self.cluster), 120, "Redis whole", 0.2)

            self.mends.start(f"Redis {old.name} (the old master)", restart)
            return f"Redis master {old.name} (port {port}) SIGKILLed"
        raise ValueError(fault)

    def settle(self) -> None:
        """Put back what a fault in progress left (after a Ctrl-C), wait for the restarts."""
        for p in self.proxies:
            p.restore()
        if self.app_stopped is not None:
            self.node(self.app_stopped).ctl("start_app")
        self.mends.join(180)


@contextlib.contextmanager
def on_cluster(directory: Path) -> Iterator[OnCluster]:
    proxies: list[Proxy] = []
    try:
        c = clusters.up(directory)
        proxies = [Proxy(("127.0.0.1", port)) for port in c.amqp_ports]
        yield OnCluster(c, proxies)
    finally:
        for p in proxies:
            p.close()
        clusters.down(directory)


@dataclass
class Chaos:
    setup: Setup
    workers: list[Worker]
    supervisor: Supervisor
    rng: random.Random
    stats: Stats

    def inflict(self, fault: str) -> str:
        """Do ``fault``; say what was done."""
        if fault not in WORKER_FAULTS:
            return self.setup.inflict(fault, self.rng)
        w = self.rng.choice(self.workers)
        with self.supervisor.lock:  # not while the supervisor is starting it
            if w.proc is None or w.proc.poll() is not None:
                return f"worker {w.cwd.name} was down: nothing done"
            beat = beat_of(w)
            if fault == "pool_kill":
                if beat is None:  # beat, not yet named, would pass for a pool process
                    return f"worker {w.cwd.name} had not named its beat yet: nothing done"
                pool = [p for p in children(w.proc.pid) if p != beat]
                if not pool:
                    return f"worker {w.cwd.name} had no pool process yet: nothing done"
                pid = self.rng.choice(pool)
                self.supervisor.expect(w, fault)
                os.kill(pid, signal.SIGKILL)
                return f"pool process {pid} of worker {w.cwd.name} SIGKILLed"
            if fault == "beat_kill":
                if beat is None or beat not in children(w.proc.pid):
                    return f"worker {w.cwd.name} had no beat yet: nothing done"
                self.supervisor.expect(w, fault)
                os.kill(beat, signal.SIGKILL)
                return f"beat {beat} of worker {w.cwd.name} SIGKILLed"
            self.supervisor.expect(w, fault)
            if fault == "worker_kill":
                os.killpg(w.proc.pid, signal.SIGKILL)
                return f"worker {w.cwd.name} SIGKILLed whole"
            w.proc.send_signal(signal.SIGTERM)
            return f"worker {w.cwd.name} sent SIGTERM"

    def go_on(self, minutes: float) -> Counter[str]:
        """A fault every 5 to 15 s for ``minutes``; how many of each."""
        faults: Counter[str] = Counter()
        end = time.monotonic() + minutes * 60
        while True:
            time.sleep(max(0.0, min(self.rng.uniform(5, 15), end - time.monotonic())))
            if time.monotonic() >= end:
                return faults
            fault = self.rng.choice(self.setup.faults)
            faults[fault] += 1
            say(f"{fault}: {self.inflict(fault)}")

    def reserved_ages(self) -> list[float]:
        """How long each tick in Celery's ``unacked`` has been reserved."""
        now = time.time()
        index = self.stats.client.zrange(f"{PREFIX}unacked_index", 0, -1, withscores=True)
        return [now - float(row[1]) for row in index]


def run(
    setup: Setup, minutes: float, seed: int, interval: float, root: Path, entries: int = 0
) -> dict[str, Any]:
    rng = random.Random(seed)
    stamp = commit()  # what runs: the tree as it is now, at the start
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PUBTASKS_"))}
    base.update(
        REDIS_URL=setup.redis_url,
        REDIS_MASTER_NAME=setup.master_name,
        PUBLISH_INTERVAL=str(interval),
        PYTHONUNBUFFERED="1",
    )
    workers = []
    for i, name in enumerate(("a", "b")):
        (root / name).mkdir()
        config = setup.config + (ENTRIES.format(n=entries) if entries else "")
        write_config(root / name, PREFIX, config)
        env = {**base, "AMQP_URL": setup.amqp_url(i)}
        workers.append(Worker(root / name, env, name=f"chaos-{name}"))
    stats = Stats.from_url(setup.redis_url, PREFIX, retries=20, master_name=setup.master_name)
    supervisor = Supervisor(workers)
    chaos = Chaos(setup, workers, supervisor, rng, stats)
    faults: Counter[str] = Counter()
    done = threading.Event()
    watcher = threading.Thread(target=supervisor.run, args=(done.is_set,), daemon=True)
    try:
        for w in workers:
            w.start()
        watcher.start()
        wait_for(lambda: stats.snapshot().totals.acked >= 10, 120, "the first acks", 0.2)
        say("workers up; faults begin")
        faults = chaos.go_on(minutes)
        say("faults end; waiting for restarts, and for reserved ticks to be published")
        setup.settle()

        def settled() -> bool:
            try:
                return all(age < STRANDED_AFTER for age in chaos.reserved_ages())
            except Exception:  # Redis failing over: look again
                return False

        wait_for(settled, 180, "no tick reserved for 30 s", 0.5)
        time.sleep(20)  # one more give-back period, then look again
        stranded = sum(1 for age in chaos.reserved_ages() if age >= STRANDED_AFTER)
    finally:
        with supervisor.lock:
            supervisor.stopping = True
        done.set()
        setup.settle()
        stopped_at = time.time()
        codes = [w.stop() for w in workers]
    clock = Clock(min(w.first_start or stopped_at for w in workers), stopped_at)
    queued = finish(root, workers[0].env, stats)
    expected = [Expected(name, every(interval)) for name in entry_names(entries)]
    ledger = account(take(setup.consume_url(), "text"), stats, expected, clock)
    snap = stats.snapshot()
    gave_back = sum(w.log.count("gave back") for w in workers)
    stats.close()
    result = summary(ledger, snap.totals, clock, stranded, queued)
    result.update(
        seed=seed,
        minutes=minutes,
        interval=interval,
        entries=len(expected),
        commit=stamp,
        faults=dict(sorted(faults.items())),
        exits=[asdict(e) for e in supervisor.exits],
        restarts=dict(Counter(str(e.code) for e in supervisor.exits)),
        stop_codes=codes,
        given_back_lines=gave_back,
        mend_errors=getattr(getattr(setup, "mends", None), "errors", []),
    )
    result["wrong"] = verdict(result, ledger)
    return result


def summary(ledger: Ledger, t: Any, clock: Clock, stranded: int, queued: int) -> dict[str, Any]:
    """The run's figures, every one measured."""
    return {
        "started": clock.started,
        "stopped": clock.stopped,
        "due": ledger.due,
        "delivered": ledger.delivered,
        "failed": len(ledger.failed),
        "failed_reasons": dict(ledger.reasons),
        "skipped": dict(ledger.skipped),
        "missing": len(ledger.missing),
        "missing_ids": ledger.missing[:50],
        "edges": list(ledger.edges),
        "extras": len(ledger.extras),
        "duplicates": ledger.duplicates,
        "numbers": ledger.numbers,
        "lost_numbers": ledger.lost_numbers[:50],
        "collisions": ledger.collisions,
        "stranded": stranded,
        "left_in_redis": ledger.stranded,
        "published_by_next_start": queued,
        "counters": {name: getattr(t, name) for name in (*COUNTERS, "pending")},
        "invariant": t.invariant_holds and t.pending == 0,
    }


def finish(root: Path, env: dict[str, str], stats: Stats) -> int:
    """A worker without beat publishes what is still queued; how many ticks that was."""
    waiting = int(stats.client.llen(f"{PREFIX}celery")) + int(stats.client.hlen(f"{PREFIX}unacked"))
    (root / "finish").mkdir()
    (root / "finish" / "celeryconfig.py").write_text((root / "a" / "celeryconfig.py").read_text())
    with Worker(root / "finish", dict(env), beat=False, name="chaos-finish") as w:

        def empty() -> bool:
            left = stats.client.llen(f"{PREFIX}celery") + stats.client.hlen(f"{PREFIX}unacked")
            return left == 0 and stats.snapshot().totals.pending == 0

        wait_for(empty, 180, "the last worker to publish what was queued", 0.5)
        w.stop()
    return waiting


def verdict(result: dict[str, Any], ledger: Ledger | None = None) -> list[str]:
    """What is wrong with a run (nothing: an empty list): the ledger's verdict (no
    failure or skip is allowed), then what only a chaos run knows."""
    wrong = [] if ledger is None else ledger_verdict(ledger)
    if result["stranded"]:
        wrong.append(f"{result['stranded']} tick(s) reserved for over {STRANDED_AFTER:g} s")
    unexplained = [e for e in result["exits"] if not e["caused"]]
    if unexplained:
        shown = ", ".join(f"{e['worker']} exited {e['code']}" for e in unexplained)
        wrong.append(f"{len(unexplained)} worker exit(s) no fault explains: {shown}")
    unclean = [code for code in result["stop_codes"] if code != 0]
    if unclean:
        wrong.append(f"worker(s) that did not stop cleanly at the end: exit {unclean}")
    if not result["invariant"]:
        wrong.append("the counters' invariant does not hold")
    wrong += result.get("mend_errors", [])
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long faults go on")
    parser.add_argument("--seed", type=int, default=None, help="replay a run's faults")
    parser.add_argument("--interval", type=float, default=0.1, help="PUBLISH_INTERVAL, s")
    parser.add_argument("--record", type=Path, help="also write the result here, as JSON")
    parser.add_argument(
        "--entries",
        type=int,
        default=0,
        help="N entries every(--interval), all due at the same instants (a burst each)",
    )
    parser.add_argument(
        "--cluster", action="store_true", help="on a 3-node cluster and Redis with Sentinel"
    )
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="the cluster's directory (--cluster)"
    )
    parser.add_argument(
        "--faults",
        help="only these faults, comma-separated (to chase one): " + ", ".join(CLUSTER_FAULTS),
    )
    args = parser.parse_args(argv)
    kinds = CLUSTER_FAULTS if args.cluster else FAULTS
    only = tuple(f.strip() for f in args.faults.split(",")) if args.faults else kinds
    unknown = [f for f in only if f not in kinds]
    if unknown:
        parser.error(f"--faults: {', '.join(unknown)} not among {', '.join(kinds)}")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    again = f"scripts/chaos{' --cluster' if args.cluster else ''} --minutes {args.minutes:g}"
    again += f" --entries {args.entries} --interval {args.interval:g}" if args.entries else ""
    again += f" --faults {args.faults}" if args.faults else ""
    say(f"seed {seed} (replay: {again} --seed {seed})")
    # SIGTERM (a CI timeout, say) stops the workers and the nodes too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="pubtasks-chaos-"))
    os.chmod(root, 0o755)  # the RabbitMQ node runs as the rabbitmq user
    began = time.monotonic()
    services = on_cluster(args.dir) if args.cluster else single(root)
    with services as setup:
        setup.faults = only
        result = run(setup, args.minutes, seed, args.interval, root, args.entries)
    result["mode"] = "cluster" if args.cluster else "single node"
    result["run_seconds"] = round(time.monotonic() - began, 1)
    print(json.dumps(result, indent=2), flush=True)
    if args.record:
        args.record.write_text(json.dumps(result, indent=2) + "\n")
    for line in result["wrong"]:
        say(f"FAILED: {line}")
    if result["wrong"]:  # the workers' logs (and Redis's AOF), to find out what happened
        say(f"FAILED; the run's logs are kept in {root}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    say("every due tick delivered; nothing failed, skipped, stranded; the invariant holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
