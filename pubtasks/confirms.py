"""Publisher-confirm bookkeeping for one channel: pure logic, no I/O.

In confirm mode RabbitMQ numbers the publishes of a channel 1, 2, 3... (the
delivery tag) and answers each with basic.ack or basic.nack. An answer with
``multiple=True`` settles *every* outstanding tag up to and including its own
(tag 0 with ``multiple`` settles all). The pika example removed one tag per
answer, so it miscounted such answers; here each tag is settled exactly once.

A message published with ``mandatory`` that no queue can take comes back as
basic.return *before* its basic.ack (the return carries no delivery tag, only
the message, so it is matched by ``message_id``). It is then counted as acked
and returned: RabbitMQ accepted it and dropped it.

When the connection or channel is lost before an answer, the outstanding tags
can never be answered (tags belong to the channel): they are unconfirmed.
RabbitMQ may or may not have routed them, which is why a tick is retried
with the same ``message_id``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    """How one basic.publish ended; the value is the Redis counter it feeds."""

    ACKED = "acked"
    NACKED = "nacked"
    UNCONFIRMED = "unconfirmed"


@dataclass
class Delivery:
    """One basic.publish awaiting its confirm."""

    key: str  # unique to this basic.publish: the member of the Redis ``pending`` set
    message_id: str
    entry: str
    number: int
    published_at: float = 0.0
    returned: str | None = None  # basic.return's reply, when the message was unroutable
    retry_return: bool = False  # a return is published again, so it does not make it done


@dataclass(frozen=True)
class Settled:
    """A delivery and how it ended."""

    delivery: Delivery
    outcome: Outcome

    @property
    def returned(self) -> bool:
        return self.delivery.returned is not None


class Tracker:
    """The deliveries awaiting confirmation on one confirm-mode channel."""

    def __init__(self) -> None:
        self._last_tag = 0
        self._waiting: dict[int, Delivery] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def oldest(self) -> Delivery | None:
        """The delivery waiting longest (the lowest tag), if any."""
        return next(iter(self._waiting.values()), None)

    def published(self, delivery: Delivery) -> int:
        """Record a basic.publish and return its delivery tag."""
        self._last_tag += 1
        self._waiting[self._last_tag] = delivery
        return self._last_tag

    def returned(self, message_id: str, reply: str) -> None:
        """Mark the oldest waiting delivery of ``message_id`` as returned (unroutable)."""
        for delivery in self._waiting.values():
            if delivery.message_id == message_id and delivery.returned is None:
                delivery.returned = reply
                return

    def confirm(self, tag: int, multiple: bool, outcome: Outcome) -> list[Settled]:
        """Settle ``tag`` (or every tag up to it, with ``multiple``); unknown tags are ignored."""
        if not multiple:
            delivery = self._waiting.pop(tag, None)
            return [] if delivery is None else [Settled(delivery, outcome)]
        tags = []
        for t in self._waiting:  # in tag order: stop at the first tag past this one
            if tag and t > tag:
                break
            tags.append(t)
        return [Settled(self._waiting.pop(t), outcome) for t in tags]

    def lose_all(self) -> list[Settled]:
        """The channel is gone: every waiting delivery is unconfirmed."""
        settled = [Settled(d, Outcome.UNCONFIRMED) for d in self._waiting.values()]
        self._waiting.clear()
        return settled
