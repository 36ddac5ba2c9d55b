"""The AMQP seam: the one module of pubtasks that touches py-amqp's and kombu's py-amqp
transport's internals (``stream.ConfirmStream`` publishes through it).

**Batched writes (``BATCH_WRITES``, on by default).** kombu 5.7's
``Producer.batch()`` lets a transport buffer publishes; its py-amqp transport
has no such session. ``Transport`` below is kombu's py-amqp transport, extended
the way kombu's own Redis transport does it: it declares ``batch_publish`` and its
channel implements ``create_publish_batch``. ``FrameBatch`` encodes each publish
with ``framing.Frames`` (byte for byte what py-amqp writes) and writes
``WRITE_BATCH`` publishes to the socket at once.

**The AMQP seam.** What this module touches past py-amqp's and kombu's public APIs
(written against py-amqp 5.4 and kombu 5.7, tested at both ends of what pyproject
admits), here and nowhere else in pubtasks:

- kombu's transport extension points: ``Transport.implements`` (declaring
  ``batch_publish``) and the channel's ``create_publish_batch``, which kombu's
  ``Producer.batch()`` calls. kombu's own Redis transport is the model; there is no
  public way to give its py-amqp transport a publish batch.
- The socket write of the batch, below.

The write:

- **What**: ``connection.transport.write(frames)`` with frames built here, not by
  py-amqp's ``frame_writer``.
- **Why**: py-amqp frames every message anew (serialising its properties is most
  of a publish's cost) and writes each alone; a tick's messages differ only in
  ``message_id``.
- **The public alternative, measured**: ``BATCH_WRITES = False`` sends each message
  through py-amqp's ``basic_publish``, with the same bytes on the wire. ``pubtasks
  bench`` measures both paths against the pika example in the same run;
  ``docs/performance.md`` has the figures, and what the public path costs.
- **What it bypasses, and why that is safe**: ``frame_writer``'s buffer lock
  (py-amqp #462/#466) guards several threads publishing on one connection; a
  ``ConfirmStream`` is used by one thread only, and checks it. ``basic_publish``'s
  look for ``connection.blocked`` before writing is done here too.
  ``connection.bytes_sent``, which only the heartbeat check reads, is not counted:
  heartbeats are off.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

import amqp.exceptions
from kombu.connection import Connection as KombuConnection
from kombu.transport import pyamqp

from pubtasks.framing import Frames
from pubtasks.properties import drop_fillers

#: Publishes whose frames go to the socket in one write (kombu's ``Producer.batch`` size).
WRITE_BATCH = 128


class FrameBatch:
    """kombu's publish-batch session (``with producer.batch():``) on a pubtasks channel.

    Keeps the frames of up to ``max_size`` publishes and writes them in one go.
    Leaving the block writes the rest; an exception inside it discards what was
    not written yet (kombu calls ``discard``).
    """

    def __init__(self, channel: Channel, max_size: int) -> None:
        self.channel = channel
        self.max_size = max_size
        self._unwritten: list[bytes] = []

    def publish(
        self,
        message: Any,
        exchange: str = "",
        routing_key: str = "",
        mandatory: bool = False,
        immediate: bool = False,
        **_: Any,  # timeout and confirm_timeout: the socket's write timeout bounds a write
    ) -> None:
        self._unwritten.append(
            self.channel.frames.publish(
                message.body,
                message.properties,
                exchange,
                routing_key,
                mandatory=mandatory,
                immediate=immediate,
            )
        )
        if len(self._unwritten) >= self.max_size:
            self.flush()

    def flush(self) -> None:
        if not self._unwritten:
            return
        data, self._unwritten = b"".join(self._unwritten), []
        connection = self.channel.connection
        if connection is None:
            raise amqp.exceptions.RecoverableConnectionError("basic_publish: connection closed")
        if connection.client_properties.get("capabilities", {}).get("connection.blocked"):
            # As py-amqp's basic_publish: read what RabbitMQ sent first, so that a
            # connection.blocked notice is seen (``on_blocked``) before writing more.
            with contextlib.suppress(socket.timeout):
                connection.drain_events(timeout=0)
        try:
            connection.transport.write(data)  # the write described in the module docstring
        except TimeoutError as exc:  # as py-amqp's basic_publish: the socket is dead
            raise amqp.exceptions.RecoverableConnectionError("basic_publish: timed out") from exc

    def discard(self) -> None:
        self._unwritten = []

    def close(self) -> None:
        self._unwritten = []


class Channel(pyamqp.Channel):
    """kombu's py-amqp channel, without kombu's filler properties, with publish batches."""

    _frames: Frames | None = None

    @property
    def frames(self) -> Frames:
        """The frame encoder of this channel (made on first use: it needs frame_max)."""
        if self._frames is None:
            self._frames = Frames(self.channel_id, self.connection.frame_max)
        return self._frames

    def prepare_message(self, *args: Any, **kwargs: Any) -> Any:
        message = super().prepare_message(*args, **kwargs)  # type: ignore[no-untyped-call]
        drop_fillers(message.properties)
        return message

    def create_publish_batch(self, max_size: int) -> FrameBatch:
        return FrameBatch(self, max_size)


class _AmqpConnection(pyamqp.Connection):
    Channel = Channel


class Transport(pyamqp.Transport):
    """kombu's py-amqp transport, declaring the publish batches its channel implements."""

    Connection = _AmqpConnection
    implements = pyamqp.Transport.implements.extend(batch_publish=True)


class SSLTransport(pyamqp.SSLTransport):
    """The same for ``amqps://``."""

    Connection = _AmqpConnection
    implements = Transport.implements


class Connection(KombuConnection):
    """A kombu Connection on pubtasks' transport, for every URL, failover alternates too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("ssl")
        self._ssl_given = dict(given) if isinstance(given, dict) else None
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def switch(self, conn_str: str) -> None:
        # kombu fills an ssl dict's ``server_hostname: None`` with the host it connects
        # to, in place, and a switch to the next URL of a failover list keeps that dict:
        # the next node's certificate would be checked against the first one's name.
        # Each switch gets the dict as it was given (AMQP_SSL), naming no host.
        super().switch(conn_str)  # type: ignore[no-untyped-call]
        if self._ssl_given is not None:
            self.ssl = dict(self._ssl_given)

    def get_transport_cls(self) -> type[pyamqp.Transport]:
        # kombu resolves the URL's scheme again on every failover (``switch``); keep its
        # choice between TLS and plain TCP, on pubtasks' subclass of it.
        chosen = super().get_transport_cls()  # type: ignore[no-untyped-call]
        return SSLTransport if issubclass(chosen, pyamqp.SSLTransport) else Transport


# -- the stream -------------------------------------------------------------------------
