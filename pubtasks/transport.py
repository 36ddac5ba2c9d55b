"""Celery's broker connection to Redis: **the one seam around kombu's Redis transport**.

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

from typing import Any

from celery.app.amqp import AMQP
from kombu.connection import Connection as KombuConnection
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from redis.exceptions import ConnectionError as RedisConnectionError


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
