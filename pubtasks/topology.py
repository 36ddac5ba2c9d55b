"""The topology pubtasks declares: kombu ``Exchange`` and ``Queue`` objects and their bindings.

Declaring goes through kombu's public entity API on a channel the caller
gives (``stream.ConfirmStream`` declares on every channel it opens). Each
declaration carries a plain description, so a conflict names the entity:
"cannot declare exchange 'message' (topic, durable): RabbitMQ replied (406)...".
Queue and exchange arguments (``queue_arguments={"x-queue-type": "quorum"}``,
``{"x-message-ttl": 60000}``) go to RabbitMQ as they are.

``DECLARE`` says how much is declared, for users of fewer permissions:

- ``"all"``: the exchanges, the queues and the bindings (configure on each, write on
  the queues, read on the exchanges).
- ``"passive"``: a passive declare of each exchange and queue, which checks that it
  exists and declares nothing; a missing one is refused by name. AMQP 0-9-1 has no
  way to check a binding without making it, so bindings are not checked: a message
  no queue takes comes back as a return (``on_return``), counted.
- ``"none"``: nothing; a missing exchange fails each publish, named.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kombu.entity import Exchange, Queue, binding

from pubtasks.settings import Settings, exchanges_of


@dataclass(frozen=True)
class Declaration:
    """One thing to declare: what it is, in words, and how, given a channel."""

    what: str
    declare: Callable[[Any], object]
    #: How a refusal begins, ``{what}`` being ``what``.
    failure: str = "cannot declare {what}"


def _arguments(arguments: Any) -> str:
    return "".join(f", {k}={v}" for k, v in sorted((arguments or {}).items()))


def describe_exchange(x: Exchange) -> str:
    kind = "durable" if x.durable else "transient"
    extra = ", passive" if x.passive else ""
    arguments = getattr(x, "arguments", None)  # kombu sets it from the class's ``attrs``
    return f"exchange {x.name!r} ({x.type}, {kind}{extra}{_arguments(arguments)})"


def describe_queue(q: Queue) -> str:
    kind = "durable" if q.durable else "transient"
    return f"queue {q.name!r} ({kind}{_arguments(getattr(q, 'queue_arguments', None))})"


def declare_exchange(x: Exchange, passive: bool = False) -> Callable[[Any], object]:
    return lambda channel: x(channel).declare(passive=passive)


def declare_queue(q: Queue, passive: bool = False) -> Callable[[Any], object]:
    return lambda channel: q(channel).queue_declare(passive=passive)


def bind_queue(q: Queue, b: binding | None = None) -> Callable[[Any], object]:
    """The queue's own binding, or one of its ``bindings``."""
    if b is None:
        return lambda channel: q(channel).queue_bind()
    return lambda channel: q(channel).bind_to(
        exchange=b.exchange, routing_key=b.routing_key, arguments=b.arguments
    )


@dataclass(frozen=True)
class Topology:
    """The exchanges, the queues, and the bindings between them."""

    exchanges: tuple[Exchange, ...]
    queues: tuple[Queue, ...]
    mode: str = "all"  # DECLARE: all, passive or none

    @classmethod
    def from_settings(cls, s: Settings) -> Topology:
        return cls(s.exchanges, s.queues, s.declare)

    def all_exchanges(self) -> list[Exchange]:
        """Every exchange to declare, once each: the listed ones, then the queues'."""
        found: dict[str, Exchange] = {}
        for x in self.exchanges:
            found.setdefault(x.name, x)
        for q in self.queues:
            for x in exchanges_of(q):
                found.setdefault(x.name, x)
        return list(found.values())

    def declarations(self) -> list[Declaration]:
        """The exchanges, then the queues, then the bindings, in the order they must exist;
        with ``passive``, the exchanges and the queues checked; with ``none``, nothing."""
        if self.mode == "none":
            return []
        if self.mode == "passive":
            missing = (
                "cannot find {what} (DECLARE='passive' declares nothing: declare it, or set "
                "DECLARE='all')"
            )
            return [
                Declaration(describe_exchange(x), declare_exchange(x, True), missing)
                for x in self.all_exchanges()
            ] + [
                Declaration(describe_queue(q), declare_queue(q, True), missing) for q in self.queues
            ]
        steps = [
            Declaration(describe_exchange(x), declare_exchange(x)) for x in self.all_exchanges()
        ]
        steps += [Declaration(describe_queue(q), declare_queue(q)) for q in self.queues]
        for q in self.queues:
            if q.exchange is not None and q.exchange.name:
                what = f"binding of queue {q.name!r} to exchange {q.exchange.name!r}"
                steps.append(Declaration(f"{what} with key {q.routing_key!r}", bind_queue(q)))
            for b in q.bindings:
                what = f"binding of queue {q.name!r} to exchange {b.exchange.name!r}"
                steps.append(Declaration(f"{what} with key {b.routing_key!r}", bind_queue(q, b)))
        return steps
