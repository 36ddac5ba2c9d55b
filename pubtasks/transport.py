"""**The worker seam**: the Celery worker's state and its Redis transport, the one
module of pubtasks that touches their internals. Written against Celery 5.6 and 5.7,
kombu 5.7 and billiard 4.3 (the versions pyproject admits, tested at both ends).

What ``supervision`` asks of the worker, and the internal each answer touches:

- ``held_tags``: ``celery.worker.state.reserved_requests`` and ``scheduled_requests``,
  the tasks a worker holds (what ``celery inspect reserved`` and ``scheduled``
  report), read without the remote-control round trip (the public alternative,
  ``app.control.inspect``, costs a broadcast per look and needs remote control).
  Celery 5.6 has no ``scheduled_requests``: a task waiting for its countdown (a tick
  given back to wait, at most 4 s) is then unlisted meanwhile, inside the give-back
  grace (``timing``).
- ``stop_worker`` and ``worker_stopping``: ``state.should_stop`` (and
  ``should_terminate``), how Celery's own signal handlers ask the worker's loop for a
  warm shutdown with an exit code; no public call does it from another thread.
- ``embedded_beat``: the worker's ``beat`` attribute, the embedded beat's service
  (``-B``), whose process Celery starts and never looks at again.
- ``unacked_tags`` and ``give_back``: the Redis transport's ``unacked`` hash (named by
  the documented ``unacked_key`` transport option) and ``qos.restore_by_tag``, kombu's
  own atomic give-back, so the message goes back exactly as kombu would put it back.
- ``queued_ticks``: the transport's lists, each priority step's (``_q_for_pri``, the
  transport's own naming), and the ``unacked`` hash, read to find a tick's task
  message; Celery's protocol-2 body (``[args, kwargs, embed]``, base64 in the Redis
  transport's JSON envelope) is decoded by hand, since kombu gives no public reader of
  a message at rest.

And Celery's broker connection to Redis itself, **the seam around kombu's Redis
transport's close**:


Celery's own transport is Redis (``REDIS_URL``, one Redis or the Sentinels). kombu's
Redis transport can stop the worker when Redis goes away while the worker holds a
reserved task: written against kombu 5.7.0 (the lowest pyproject admits, the one
installed and tested); the code in question is the same in 5.6 and on kombu's main
branch as last seen (August 2026). A Sentinel failover (the master SIGKILLed) did it to
a worker that held a task and ran Celery's defaults (remote control on), in each run
that had both, in its main process:

1. A Redis socket fails (the BRPOP's, or the remote control's pub/sub). Celery's
   consumer calls ``Connection.collect()``, which closes every channel, ignoring
   connection errors, and then sets the transport's ``client`` to None.
2. The Redis channel's ``close()`` first reads the reply of the BRPOP in flight
   (celery/kombu#1733, so that a task BRPOP popped is not lost). With the server gone,
   that read raises a connection error *before* the channel is marked closed; another
   channel's close (remote control: deleting its auto-delete queue) raises too and
   ends ``collect()``'s loop over the channels. The channel that consumes the tasks,
   with the reserved ones, is left open, its QoS holding them.
3. Celery then closes the connection again (``ignore_errors(connection, connection.
   close)``): that channel's ``close()`` now gets past the BRPOP, drops its connection
   pools, and gives the reserved tasks back (``restore_unacked``), which needs a new
   pool: ``_connparams`` (reached through ``SentinelChannel._get_pool`` for
   ``sentinel://``, ``Channel._get_pool`` for ``redis://``) reads the host from
   ``self.connection.client``, the kombu ``Connection`` that step 1 set to None:
   ``AttributeError: 'NoneType' object has no attribute 'hostname'``. That is not a
   connection error, so ``ignore_errors`` lets it through, and Celery stops the worker
   ("Unrecoverable error").

Upstream: no kombu issue or fix for it was found (its issues and source searched):
``Channel.close()`` still reads the BRPOP first, before marking the channel closed,
and ``_connparams`` still dereferences the client unguarded. Should kombu fix it,
``tests/test_transport.py``'s test of kombu's own transport fails, and this module
can go.

What this module changes, in a subclass of each of kombu's two Redis transports, and
nothing else:

- ``close()``: when kombu's close raises a connection error and leaves the channel
  open, it finishes the close as kombu's would (out of the poller, pools dropped,
  clients closed, then the virtual channel's close: consumers cancelled, reserved
  tasks given back) without the steps that need the lost server: the BRPOP read and
  the deletion of auto-delete fanout queues. It runs inside ``collect()``, while the
  transport still has its client, so the channel ends closed.
- ``_connparams``: with no client (the channel outlived its connection), it raises
  redis-py's ``ConnectionError``, which kombu and Celery handle as a lost connection,
  instead of the ``AttributeError`` that stops the worker.

A give-back that fails (Redis is away) leaves the reserved tasks where kombu put them
when it delivered them, in the transport's ``unacked`` hash, and in the worker, which
still runs them and acks them. One it cannot ack, or a worker gone meanwhile, is given
back by pubtasks' supervisor (``supervision.py``) once no live worker holds it.

It is selected by the app's ``amqp_cls`` (``celery.py``): Celery builds every broker
connection (consumer, beat's producer, the supervisor's) from ``AMQP.Connection``, a
kombu ``Connection`` here whose public ``get_transport_cls()`` swaps kombu's two
Redis transports for these. A ``broker_transport`` setting would not do: kombu's
``Connection.switch()``, which moves to the next Sentinel of the URL on a failed
connect, takes the transport from the URL's scheme again.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from celery.app.amqp import AMQP
from celery.worker import state
from kombu.connection import Connection as KombuConnection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from redis.exceptions import ConnectionError as RedisConnectionError

from pubtasks.ids import message_id


class _ClosingChannel:
    """What both channels add to kombu's (the mixin comes first in their bases)."""

    def close(self: Any) -> None:
        try:
            super().close()  # type: ignore[misc]
        except self.connection_errors:
            if self.closed:
                raise  # closed; only the give-back failed: what it held stays in unacked
            _finish_close(self)

    def _connparams(self: Any, asynchronous: bool = False) -> Any:
        transport = self.connection
        if transport is None or transport.client is None:
            raise RedisConnectionError(
                "this Redis channel's connection was closed; a new one is being made"
            )
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


def _finish_close(channel: Any) -> None:
    """The rest of kombu's ``Channel.close()`` (redis.py, 5.7.0) after a failed BRPOP
    read or fanout queue deletion: each step as kombu takes it, minus those two."""
    transport = channel.connection
    if transport is not None and transport.cycle is not None:
        transport.cycle.discard(channel)
    channel._disconnect_pools()
    channel._close_clients()
    virtual.Channel.close(channel)  # closed, consumers cancelled, reserved given back


class Channel(_ClosingChannel, kombu_redis.Channel):
    """kombu's ``redis://`` channel, closing whatever Redis does."""


class SentinelChannel(_ClosingChannel, kombu_redis.SentinelChannel):
    """kombu's ``sentinel://`` channel, closing whatever Redis does."""


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel


#: kombu's transport -> ours.
REPLACING: dict[type, type] = {
    kombu_redis.Transport: Transport,
    kombu_redis.SentinelTransport: SentinelTransport,
}


class Connection(KombuConnection):
    """kombu's ``Connection``, with pubtasks' Redis transports in place of kombu's."""

    def get_transport_cls(self) -> Any:
        found = super().get_transport_cls()  # type: ignore[no-untyped-call]
        return REPLACING.get(found, found)


class BrokerAMQP(AMQP):  # type: ignore[misc]
    """Celery's AMQP helper (``app.amqp``), whose connections are the ``Connection`` above."""

    Connection = Connection
    BrokerConnection = Connection


# -- the worker's state and its transport, as supervision asks ------------------------------


def queued_ticks(channel: Any, queues: set[str]) -> set[str]:
    """The ids of the ticks whose task messages are in ``queues`` (each list, one per
    priority step) or reserved (the Redis transport's lists and its ``unacked``
    hash)."""
    client = channel.client
    steps = getattr(channel, "priority_steps", [0])
    raw: list[Any] = []
    for queue in sorted(queues):
        for name in {channel._q_for_pri(queue, p) for p in steps}:
            raw += client.lrange(name, 0, -1)
    raw += [json.loads(bytes_to_str(v))[0] for v in client.hvals(channel.unacked_key)]
    found = set()
    for item in raw:
        try:
            message = json.loads(bytes_to_str(item)) if isinstance(item, str | bytes) else item
            kwargs = json.loads(base64.b64decode(message["body"]))[1]
            for tick in kwargs.get("ticks") or [kwargs]:  # a group's, or a tick's alone
                manual = bool(tick.get("manual", False))
                found.add(message_id(tick["entry"], float(tick["scheduled_at"]), manual))
        except (ValueError, KeyError, TypeError, IndexError):
            continue  # not a tick (another task in the same queue)
    return found


def held_tags() -> set[str]:
    """The delivery tags of the tasks this worker holds: reserved, running, or waiting
    for their countdown. Read from another thread, so a set that changes while it is
    copied is copied again."""
    for _ in range(10):
        try:
            requests = [*state.reserved_requests, *getattr(state, "scheduled_requests", ())]
        except RuntimeError:  # changed size during iteration
            continue
        return {str(r.message.delivery_tag) for r in requests if r.message is not None}
    raise RuntimeError("the worker's reserved requests kept changing")


def stop_worker(code: int) -> None:
    """Ask the worker's loop for a warm shutdown that exits with ``code``."""
    state.should_stop = code


def worker_stopping() -> bool:
    """Whether the worker is shutting down (warm or cold)."""
    return bool(state.should_stop or state.should_terminate)


def embedded_beat(worker: Any) -> Any:
    """The embedded beat's service of ``worker`` (``-B``), or None."""
    return getattr(worker, "beat", None)


def unacked_tags(channel: Any) -> set[str]:
    """The delivery tags in the Redis transport's ``unacked`` hash (reserved tasks)."""
    return {bytes_to_str(t) for t in channel.client.hkeys(channel.unacked_key)}


def give_back(channel: Any, tag: str) -> None:
    """Give a reserved task back to its queue, as kombu itself would."""
    channel.qos.restore_by_tag(tag)
