"""The topology pubtasks declares: kombu ``Exchange`` and ``Queue`` objects and their binding.

Declaring goes through kombu's public entity API on a channel the caller
gives (``rabbitmq.ConfirmStream`` declares on every channel it opens). Each
declaration carries a plain description, so a conflict names the entity:
"cannot declare exchange 'message' (topic, durable): RabbitMQ replied (406)...".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kombu.entity import Exchange, Queue

from pubtasks.settings import Settings


@dataclass(frozen=True)
class Declaration:
    """One thing to declare: what it is, in words, and how, given a channel."""

    what: str
    declare: Callable[[Any], object]


@dataclass(frozen=True)
class Topology:
    """The durable exchange, the durable queue, and the binding between them."""

    exchange: Exchange
    queue: Queue

    @classmethod
    def from_settings(cls, s: Settings) -> Topology:
        exchange = Exchange(s.exchange, type=s.exchange_type, durable=True, auto_delete=False)
        queue = Queue(
            s.queue, exchange=exchange, routing_key=s.binding_key, durable=True, auto_delete=False
        )
        return cls(exchange, queue)

    def declarations(self) -> list[Declaration]:
        """The exchange, then the queue, then the binding, in the order they must exist."""
        x, q = self.exchange, self.queue
        return [
            Declaration(
                f"exchange {x.name!r} ({x.type}, durable)",
                lambda channel: x(channel).declare(),
            ),
            Declaration(f"queue {q.name!r} (durable)", lambda channel: q(channel).queue_declare()),
            Declaration(
                f"binding of queue {q.name!r} to exchange {x.name!r} with key {q.routing_key!r}",
                lambda channel: q(channel).queue_bind(),
            ),
        ]
