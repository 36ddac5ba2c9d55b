"""``scripts/chaos``: random faults against two ``-B`` workers, then an account of
every tick.

It starts a RabbitMQ node and a Redis (append-only, fsynced) of its own on free
ports (``nodes``), two ``celery -A pubtasks worker -B`` at ``--interval`` (0.1 s),
and then, every 5 to 15 s, one fault drawn at random:

- ``close``: RabbitMQ closes every connection;
- ``stop_app``: RabbitMQ's app stopped for 2 to 6 s;
- ``redis_kill``: Redis SIGKILLed, then started again from its AOF;
- ``pool_kill``: a pool process of a worker SIGKILLed;
- ``beat_kill``: a worker's embedded beat SIGKILLed (the worker exits 3);
- ``worker_kill``: a whole worker SIGKILLed (its process group);
- ``worker_term``: a worker stopped with SIGTERM (a warm shutdown).

It plays the workers' supervisor: a worker that exits, for whatever reason, is
started again a second later. After ``--minutes`` it waits until no tick has
been reserved for more than 30 s (a tick stranded by a dead worker), stops the
workers, lets a worker without beat publish what is still queued (as the next
start would), and accounts for every number (``ledger``): delivered, failed with
its reason, or lost; grid points never fired; duplicates, which must keep their
``message_id``; the counters' invariant; ticks left in Redis. It exits 1 if
anything was lost, missed or stranded, or the invariant is broken, and then
keeps the run's directory (the workers' logs, Redis's AOF) and prints the lost
numbers. The seed is printed first: ``--seed`` replays a run's faults, in the
same order.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pubtasks.bench.ledger import account, take
from pubtasks.bench.nodes import RabbitNode, RedisNode
from pubtasks.bench.worker import Worker, write_config
from pubtasks.defaults import DEFAULT_ENTRY
from pubtasks.stats import COUNTERS, Stats
from pubtasks.waiting import wait_for

PREFIX = "chaos:"
CONFIG = """
from pubtasks.schedule import every

beat_schedule = {"publish-text": {"task": "pubtasks.publish", "schedule": every()}}
CONFIRM_TIMEOUT = 2.0
"""
FAULTS = (
    "close",
    "stop_app",
    "redis_kill",
    "pool_kill",
    "beat_kill",
    "worker_kill",
    "worker_term",
)
#: A tick reserved longer than this at the end was stranded (a live worker's takes ms).
STRANDED_AFTER = 30.0


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
    marker = "watching the embedded beat (pid "
    log = worker.log
    at = log.rfind(marker)
    return None if at < 0 else int(log[at + len(marker) :].split(")", 1)[0])


@dataclass
class Supervisor:
    """Starts a worker again a second after it exits, as compose's ``restart:`` would."""

    workers: list[Worker]
    exits: Counter[int] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: bool = False

    def look(self) -> None:
        with self.lock:
            if self.stopping:
                return
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    code = w.proc.returncode
                    self.exits[code] += 1
                    say(f"worker {w.cwd.name} exited {code}; starting it again")
                    time.sleep(1)
                    with contextlib.suppress(ProcessLookupError):  # what it left behind
                        os.killpg(w.proc.pid, signal.SIGKILL)
                    w.start()

    def run(self, until: Callable[[], bool]) -> None:
        while not until():
            self.look()
            time.sleep(0.2)


@dataclass
class Chaos:
    rabbit: RabbitNode
    redis: RedisNode
    workers: list[Worker]
    supervisor: Supervisor
    rng: random.Random
    stats: Stats
    app_stopped: bool = False

    def worker(self) -> Worker:
        return self.rng.choice(self.workers)

    def inflict(self, fault: str) -> str:
        """Do ``fault``; say what was done."""
        if fault == "close":
            self.rabbit.ctl("close_all_connections", "chaos: forced close")
            return "RabbitMQ closed every connection"
        if fault == "stop_app":
            seconds = self.rng.uniform(2, 6)
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
        w = self.worker()
        with self.supervisor.lock:  # not while the supervisor is starting it
            if w.proc is None or w.proc.poll() is not None:
                return f"worker {w.cwd.name} was down: nothing done"
            beat = beat_of(w)
            if fault == "pool_kill":
                pool = [p for p in children(w.proc.pid) if p != beat]
                if not pool:
                    return f"worker {w.cwd.name} had no pool process yet: nothing done"
                pid = self.rng.choice(pool)
                os.kill(pid, signal.SIGKILL)
                return f"pool process {pid} of worker {w.cwd.name} SIGKILLed"
            if fault == "beat_kill":
                if beat is None or beat not in children(w.proc.pid):
                    return f"worker {w.cwd.name} had no beat yet: nothing done"
                os.kill(beat, signal.SIGKILL)
                return f"beat {beat} of worker {w.cwd.name} SIGKILLed"
            if fault == "worker_kill":
                os.killpg(w.proc.pid, signal.SIGKILL)
                return f"worker {w.cwd.name} SIGKILLed whole"
            w.proc.send_signal(signal.SIGTERM)
            return f"worker {w.cwd.name} sent SIGTERM"

    def reserved_ages(self) -> list[float]:
        """How long each tick in Celery's ``unacked`` has been reserved."""
        now = time.time()
        index = self.stats.client.zrange(f"{PREFIX}unacked_index", 0, -1, withscores=True)
        return [now - float(row[1]) for row in index]


@contextlib.contextmanager
def services(root: Path) -> Iterator[tuple[RabbitNode, RedisNode]]:
    rabbit = RabbitNode(root / "rabbit", f"pubtasks-chaos-{os.getpid()}")
    redis_node = RedisNode(root / "redis")
    try:
        rabbit.start()
        redis_node.start()
        yield rabbit, redis_node
    finally:
        redis_node.kill()
        rabbit.stop()


def run(minutes: float, seed: int, interval: float, root: Path) -> dict[str, Any]:
    rng = random.Random(seed)
    with services(root) as (rabbit, redis_node):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PUBTASKS_"))}
        env.update(
            AMQP_URL=rabbit.url(),
            REDIS_URL=redis_node.url,
            PUBLISH_INTERVAL=str(interval),
            PYTHONUNBUFFERED="1",
        )
        workers = []
        for name in ("a", "b"):
            (root / name).mkdir()
            write_config(root / name, PREFIX, CONFIG)
            workers.append(Worker(root / name, dict(env), name=f"chaos-{name}"))
        stats = Stats.from_url(redis_node.url, PREFIX)
        supervisor = Supervisor(workers)
        chaos = Chaos(rabbit, redis_node, workers, supervisor, rng, stats)
        faults: Counter[str] = Counter()
        try:
            for w in workers:
                w.start()
            wait_for(lambda: stats.snapshot().totals.acked >= 10, 60, "the first acks", 0.2)
            say("workers up; faults begin")
            end = time.monotonic() + minutes * 60
            while time.monotonic() < end:
                pause = time.monotonic() + rng.uniform(5, 15)
                supervisor.run(lambda p=pause: time.monotonic() >= min(p, end))  # type: ignore[misc]
                if time.monotonic() >= end:
                    break
                fault = rng.choice(FAULTS)
                faults[fault] += 1
                say(f"{fault}: {chaos.inflict(fault)}")
            say("faults end; waiting for reserved ticks to be published or given back")

            def settled() -> bool:
                supervisor.look()
                return all(age < STRANDED_AFTER for age in chaos.reserved_ages())

            wait_for(settled, 120, "no tick reserved for 30 s", 0.5)
            quiet = time.monotonic() + 20  # one more give-back period, then look again
            supervisor.run(lambda: time.monotonic() >= quiet)
            stranded = sum(1 for age in chaos.reserved_ages() if age >= STRANDED_AFTER)
        finally:
            with supervisor.lock:
                supervisor.stopping = True
            if chaos.app_stopped:
                rabbit.ctl("start_app")
            codes = [w.stop() for w in workers]
        queued = finish(root, env, stats)
        ledger = account(take(rabbit.url(), "text"), stats, interval, DEFAULT_ENTRY)
        snap = stats.snapshot()
        gave_back = sum(w.log.count("gave back") for w in workers)
        stats.close()
    t = snap.totals
    return {
        "seed": seed,
        "minutes": minutes,
        "interval": interval,
        "faults": dict(sorted(faults.items())),
        "restarts": {str(code): n for code, n in sorted(supervisor.exits.items())},
        "stop_codes": codes,
        "scheduled": ledger.scheduled,
        "delivered": ledger.delivered,
        "duplicates": ledger.duplicates,
        "collisions": ledger.collisions,
        "failed": len(ledger.failed),
        "failed_reasons": dict(ledger.reasons),
        "lost": ledger.lost,
        "lost_numbers": ledger.lost_numbers[:50],
        "missed": ledger.missed,
        "stranded": stranded,
        "left_in_redis": ledger.stranded,
        "published_by_next_start": queued,
        "given_back_lines": gave_back,
        "counters": {name: getattr(t, name) for name in (*COUNTERS, "pending")},
        "invariant": t.invariant_holds and t.pending == 0,
    }


def finish(root: Path, env: dict[str, str], stats: Stats) -> int:
    """A worker without beat publishes what is still queued; how many ticks that was."""
    waiting = int(stats.client.llen(f"{PREFIX}celery")) + int(stats.client.hlen(f"{PREFIX}unacked"))
    (root / "finish").mkdir()
    write_config(root / "finish", PREFIX, CONFIG)
    with Worker(root / "finish", dict(env), beat=False, name="chaos-finish") as w:

        def empty() -> bool:
            left = stats.client.llen(f"{PREFIX}celery") + stats.client.hlen(f"{PREFIX}unacked")
            return left == 0 and stats.snapshot().totals.pending == 0

        wait_for(empty, 180, "the last worker to publish what was queued", 0.5)
        w.stop()
    return waiting


def verdict(result: dict[str, Any]) -> list[str]:
    """What is wrong with a run (nothing: an empty list)."""
    wrong = []
    for key in ("lost", "missed", "stranded", "left_in_redis", "collisions"):
        if result[key]:
            wrong.append(f"{key} = {result[key]}")
    if not result["invariant"]:
        wrong.append("the counters' invariant does not hold")
    return wrong


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long faults go on")
    parser.add_argument("--seed", type=int, default=None, help="replay a run's faults")
    parser.add_argument("--interval", type=float, default=0.1, help="PUBLISH_INTERVAL, s")
    parser.add_argument("--record", type=Path, help="also write the result here, as JSON")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    say(f"seed {seed} (replay: scripts/chaos --minutes {args.minutes:g} --seed {seed})")
    # SIGTERM (a CI timeout, say) stops the workers and the nodes too, as Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    root = Path(tempfile.mkdtemp(prefix="pubtasks-chaos-"))
    os.chmod(root, 0o755)  # the RabbitMQ node runs as the rabbitmq user
    result = run(args.minutes, seed, args.interval, root)
    print(json.dumps(result, indent=2), flush=True)
    if args.record:
        args.record.write_text(json.dumps(result, indent=2) + "\n")
    wrong = verdict(result)
    for line in wrong:
        say(f"FAILED: {line}")
    if wrong:  # the workers' logs and Redis's AOF, to find out what happened
        say(f"FAILED; the run's logs are kept in {root}")
        return 1
    shutil.rmtree(root, ignore_errors=True)
    say("nothing lost, missed or stranded; the invariant holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
