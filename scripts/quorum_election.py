"""How a quorum queue's leader election looks to publishers, measured from outside.

On a cluster of ``scripts/cluster`` (its ``--dir``), for each run: a fresh vhost and a
quorum queue ``q``, declared through the node that is to lead it; publishers with
confirms, one publish at a time, each recording every outcome (ack, nack, a confirm
not come within 1 s, a lost connection) with its time:

- ``fixed-nodeN``: connected to a surviving node before the kill, never reconnecting;
- ``failover-reuse0/1``: a failover URL starting at the victim (as pubtasks' pool
  processes connect), reconnecting to the next node at once, and keeping their
  channel after a nack (as pubtasks' tick policy does);
- ``failover-fresh-channel``: the same, opening a new channel after each nack;
- ``failover-fresh-connection``: the same, opening a new connection after each nack.

Then the victim is SIGKILLed, the publishers run 25 s more, and the victim is started
again. ``leader`` kills the node leading the queue (the leader moves round the nodes
from run to run); ``member`` kills another member, the one the failover URLs start at.
One JSON line per run: each publisher's first ack after the kill, its nacks (how many,
from when until when), the node it reconnected to.

usage: .venv/bin/python scripts/quorum_election.py DIR RUNS leader|member
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp

from pubtasks.bench.waiting import wait_for
from tests.support.cluster import Cluster

CONFIRM_TIMEOUT = 1.0
AFTER_KILL = 25.0


@dataclass
class Publisher:
    name: str
    ports: list[int]  # the failover order
    vhost: str
    fresh_on_nack: str = ""  # "", "channel" or "connection": what a nack replaces
    log: list[tuple[float, str, int]] = field(default_factory=list)  # (time, outcome, port)
    reconnects: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        turn, conn, channel, tag = 0, None, None, 0
        answers: dict[int, str] = {}
        while not self.stop.is_set():
            port = self.ports[turn % len(self.ports)]
            if conn is None:
                try:
                    conn = amqp.Connection(
                        f"127.0.0.1:{port}", virtual_host=self.vhost,
                        connect_timeout=1, read_timeout=2, write_timeout=2,
                    )  # fmt: skip
                    conn.connect()
                    channel, tag = confirm_channel(conn, answers), 0
                    self.reconnects.append((time.time(), port))
                except Exception as exc:
                    self.log.append((time.time(), f"connect: {type(exc).__name__}", port))
                    conn, turn = None, turn + 1
                    time.sleep(0.1)
                    continue
            try:
                tag += 1
                channel.basic_publish(amqp.Message(b"x"), exchange="", routing_key="q")
                sent = time.time()
                while tag not in answers and time.time() - sent < CONFIRM_TIMEOUT:
                    with contextlib.suppress(socket.timeout):
                        conn.drain_events(timeout=max(0.01, CONFIRM_TIMEOUT - time.time() + sent))
                outcome = answers.pop(tag, "timeout")
                self.log.append((time.time(), outcome, port))
                if outcome == "timeout":
                    raise ConnectionError("no confirm")
                if outcome == "nack" and self.fresh_on_nack == "channel":
                    with contextlib.suppress(Exception):
                        channel.close()
                    channel, tag = confirm_channel(conn, answers), 0
                elif outcome == "nack" and self.fresh_on_nack == "connection":
                    with contextlib.suppress(Exception):
                        conn.close()
                    conn = None  # the same node again
                    continue
                time.sleep(0.02)
            except Exception as exc:
                self.log.append((time.time(), f"lost: {type(exc).__name__}", port))
                with contextlib.suppress(Exception):
                    conn.collect()
                conn, turn = None, turn + 1

    def summary(self, killed: float) -> dict[str, Any]:
        after = [(t - killed, outcome, port) for t, outcome, port in self.log if t >= killed]
        nacks = [t for t, outcome, _ in after if outcome == "nack"]
        first_ack = next((t for t, outcome, _ in after if outcome == "ack"), None)
        reconnects = [(round(t - killed, 3), port) for t, port in self.reconnects if t >= killed]
        return {
            "publisher": self.name,
            "first_ack_s": None if first_ack is None else round(first_ack, 3),
            "nacks": len(nacks),
            "nacked_s": [round(nacks[0], 3), round(nacks[-1], 3)] if nacks else None,
            "other": sorted({o for _, o, _ in after if o not in ("ack", "nack")}),
            "first_reconnect": reconnects[0] if reconnects else None,
            "reconnects": len(reconnects),
        }


def confirm_channel(conn: amqp.Connection, answers: dict[int, str]) -> amqp.Channel:
    channel = conn.channel()
    channel.confirm_select()
    answers.clear()
    channel.events["basic_ack"].add(lambda tag, multiple: answers.__setitem__(tag, "ack"))
    channel.events["basic_nack"].add(lambda tag, multiple: answers.__setitem__(tag, "nack"))
    return channel


def leader(cluster: Cluster, vhost: str, via: int) -> str:
    out = cluster.rabbit(via).ctl(
        "list_queues", "-p", vhost, "name", "leader", "--no-table-headers"
    )
    return out.split()[1]


def running(cluster: Cluster) -> int:
    with contextlib.suppress(Exception):
        out = cluster.rabbit(0).ctl("eval", "length(rabbit_nodes:all_running()).")
        return int(out.strip())
    return 0


def one_run(cluster: Cluster, scenario: str, run: int) -> dict[str, Any]:
    vhost = f"election-{uuid.uuid4().hex[:8]}"
    cluster.rabbit(0).ctl("add_vhost", vhost)
    cluster.rabbit(0).ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    leads = run % len(cluster.nodes) if scenario == "leader" else 0
    with amqp.Connection(f"127.0.0.1:{cluster.amqp_ports[leads]}", virtual_host=vhost) as c:
        c.channel().queue_declare(
            "q", durable=True, auto_delete=False, arguments={"x-queue-type": "quorum"}
        )
    victim = leads if scenario == "leader" else 1
    others = [i for i in range(len(cluster.nodes)) if i != victim]
    ports = cluster.amqp_ports
    order = [ports[(victim + k) % len(ports)] for k in range(len(ports))]
    publishers = [Publisher(f"fixed-node{i}", [ports[i]], vhost) for i in others]
    publishers += [Publisher(f"failover-reuse{k}", order, vhost) for k in range(2)]
    publishers += [Publisher("failover-fresh-channel", order, vhost, "channel")]
    publishers += [Publisher("failover-fresh-connection", order, vhost, "connection")]
    threads = [threading.Thread(target=p.run, daemon=True) for p in publishers]
    before = leader(cluster, vhost, leads)
    try:
        for t in threads:
            t.start()
        wait_for(
            lambda: all(sum(o == "ack" for _, o, _ in p.log) >= 20 for p in publishers),
            30, "20 acks each",
        )  # fmt: skip
        killed = time.time()
        cluster.rabbit(victim).kill()
        time.sleep(AFTER_KILL)  # a fixed span of observation, not a wait for a condition
    finally:
        for p in publishers:
            p.stop.set()
        for t in threads:
            t.join(10)
    result = {
        "scenario": scenario,
        "victim": cluster.nodes[victim],
        "leader_before": before,
        "leader_after": leader(cluster, vhost, others[0]),
        "publishers": [p.summary(killed) for p in publishers],
    }
    cluster.rabbit(victim).start()
    wait_for(lambda: running(cluster) == len(cluster.nodes), 120, "every node running", 0.5)
    cluster.rabbit(0).ctl("delete_vhost", vhost)
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in ("leader", "member"):
        print(__doc__.rsplit("usage: ", 1)[1], file=sys.stderr)
        return 2
    cluster = Cluster.load(Path(argv[0]))
    for run in range(int(argv[1])):
        print(json.dumps(one_run(cluster, argv[2], run)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
