"""A group of ticks published as one: the ticks of a burst that beat sent in one task.

When many entries fall due at the same instant, beat sends their ticks in groups
(``beat``: one task message per group). ``GroupPolicy.publish`` publishes a group's
messages through one confirm window, as the tick policy publishes one tick's, and
then decides per tick:

- every message of the tick acked (or returned and counted, ``on_return="count"``):
  it ended, with its ``Result``;
- already done (the group's task is a redelivery): ended, nothing published;
- past ``TICK_DEADLINE``, or refused for good (a refused login or declaration, which
  every tick would meet): failed, with its reason;
- anything else (nacked, returned to be published again, unconfirmed, the channel
  lost, a payload function to run): the tick leaves the group with its ``Later``,
  as the tick policy would have given it back after the same attempt, and the
  caller sends it on its own, where it takes its entry's lane (``lanes``). A sick
  entry's tick so never holds the group, nor waits in it. A tick is charged an
  attempt only for a fault of its own: a nack, or a publish of its own unanswered for
  CONFIRM_TIMEOUT. A channel lost under the group (one entry's publish may have
  closed it for all), or another tick's timeout, sends it on alone with all its
  attempts, and there only the tick at fault is charged.

Only RabbitMQ unreachable holds the whole group (``Later`` raised, the group's task
is retried): every tick would meet it, alone or grouped.

Like the tick policy it never sleeps, and sees RabbitMQ only as a ``Stream``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pubtasks import message, timing
from pubtasks.confirms import Outcome
from pubtasks.errors import (
    AccessRefused,
    ChannelLost,
    PubtasksError,
    TopologyError,
    Unreachable,
)
from pubtasks.policy import Attempt, Listener, Result, TickPolicy
from pubtasks.tries import Later, Tries, nack_backoff, return_backoff

log = logging.getLogger(__name__)


#: Each tick of a group still to publish, with its messages not done.
Todo = list[tuple[message.Tick, list[message.Outgoing]]]


class GroupListener(Listener, Protocol):
    """A listener that reads the done marks of many ticks at once."""

    def done_many(self, ticks: Sequence[message.Tick]) -> list[set[str]]: ...


@dataclass
class Ended:
    """What became of each tick of a group."""

    results: list[Result] = field(default_factory=list)  # acked, returned or done before
    failed: list[tuple[message.Tick, str]] = field(default_factory=list)  # with the reason
    alone: list[tuple[message.Tick, Later]] = field(default_factory=list)  # to go on alone


class GroupPolicy(TickPolicy):
    """Publishes groups of ticks through one confirm window (``publish_group``); a
    single tick still goes through ``publish``."""

    listener: GroupListener

    def publish_group(self, ticks: Sequence[message.Tick]) -> Ended:
        """Publish each tick's messages once, together; say how each tick ended, or that
        it goes on alone (see the module's docstring). Raises ``Later`` when RabbitMQ is
        unreachable: the whole group waits (those that would pass their deadline
        meanwhile are failed first)."""
        ended = Ended()
        self._outcomes = {}
        todo = self._to_publish(ticks, ended)
        if not todo or not self._connected(ended, todo):
            return ended
        pairs = [(tick, out) for tick, outs in todo for out in outs]
        try:
            sent = self._stream_out(pairs, {})
        except (PubtasksError, Later):
            raise  # Redis unavailable (``StatsUnavailable``): the task tries the group again
        except Exception as exc:  # a bug, ours or a library's: fail what is not acked
            self._contain_group(ended, todo, exc)
            return ended
        self._decide(ended, todo, sent)
        return ended

    def _to_publish(self, ticks: Sequence[message.Tick], ended: Ended) -> Todo:
        """Each tick's messages to publish now; those done before, past their deadline
        or with a payload to make are put where they belong in ``ended``."""
        now = self.clock()
        late = f"TICK_DEADLINE={self.limits.tick_deadline:g} s passed"
        todo: Todo = []
        for tick, done in zip(ticks, self.listener.done_many(ticks), strict=True):
            outs = [out for out in tick.messages() if out.message_id not in done]
            if not outs:
                ended.results.append(Result(tick.message_id, tick.number, "done before", 0, now))
            elif now > tick.scheduled_at + self.limits.tick_deadline:
                self._give_up(ended, tick, outs, f"{late} before it could be published")
            elif tick.recipe.payload is not None:  # its payload runs in its lane
                ended.alone.append((tick, Later(0.0, Tries())))
            else:
                todo.append((tick, outs))
        return todo

    def _connected(self, ended: Ended, todo: Todo) -> bool:
        """Make sure the stream can publish; else put each tick where the error puts it
        (raises ``Later`` when RabbitMQ is unreachable: ``_unreachable``)."""
        now = self.clock()
        deadline = min(t.scheduled_at for t, _ in todo) + self.limits.tick_deadline
        try:
            self.stream.ensure(timeout=max(0.0, min(deadline - now, timing.CONNECT_BUDGET)))
        except Unreachable as exc:
            self._unreachable(ended, todo, exc)
            return False
        except (AccessRefused, TopologyError) as exc:
            for tick, outs in todo:
                self._give_up(ended, tick, outs, str(exc))
            return False
        except ChannelLost as exc:  # before anything was published: charged to none
            for tick, _ in todo:
                ended.alone.append((tick, Later(0.0, Tries(reason=exc.reason))))
            return False
        return True

    def _decide(
        self,
        ended: Ended,
        todo: Todo,
        sent: Attempt,
    ) -> None:
        """Each tick's end after the group's attempt, as ``TickPolicy._publish`` would
        decide it after its first attempt."""
        renewed = False
        for tick, outs in todo:
            mine = [sent.settled[o.message_id] for o in outs if o.message_id in sent.settled]
            bounced = [x for x in mine if x.returned and x.delivery.retry_return]
            acked = {x.delivery.message_id for x in mine if x.outcome is Outcome.ACKED}
            acked -= {x.delivery.message_id for x in bounced}
            left = [o for o in outs if o.message_id not in acked]
            if not left:
                counted = any(x.returned for x in mine)
                outcome = "returned" if counted else "acked"
                ended.results.append(Result(tick.message_id, tick.number, outcome, 1, self.clock()))
                continue
            nacked = sum(1 for x in mine if x.outcome is Outcome.NACKED)
            if bounced and len(bounced) == len(left) and sent.error is None:
                reason = str(bounced[-1].delivery.returned)
                later = Later(return_backoff(1), Tries().at(0, 1, reason))
                ended.alone.append((tick, later))
                continue
            reason = sent.error or (f"{nacked} nacked by RabbitMQ" if nacked else "unconfirmed")
            if tick.batch == 1 and nacked:
                reason = "nacked by RabbitMQ"
            waited = any(o.message_id in sent.waited for o in left)
            if sent.error is not None and not nacked and not waited:
                # The group stopped for a fault that was not this tick's own: its channel
                # lost, most likely by one entry's publish (an exchange deleted,
                # DECLARE='none'), or another tick's publish unanswered for
                # CONFIRM_TIMEOUT (a quorum queue with no leader) while this one was not
                # sent yet or had not waited that long. Not charged: alone, only the tick
                # at fault is charged, even with PUBLISH_ATTEMPTS=1.
                ended.alone.append((tick, Later(0.0, Tries(reason=reason))))
                continue
            if self.limits.attempts <= 1:
                self._give_up(ended, tick, left, f"gave up after 1 attempts: {reason}")
                continue
            self._warn(tick, 1, reason)
            if nacked and not renewed:
                self.stream.renew()  # as after a nack of a tick alone: a new channel
                renewed = True
            # A channel RabbitMQ closed for good is met again alone, where it fails the
            # tick whose publish closed it, and not the others.
            delay = nack_backoff(1) if nacked else 0.0
            ended.alone.append((tick, Later(delay, Tries().at(1, 0, reason))))

    def _unreachable(
        self,
        ended: Ended,
        todo: Todo,
        exc: Unreachable,
    ) -> Ended:
        """RabbitMQ unreachable: fail the ticks that waiting would take past their
        deadline, and have the rest wait together (``Later``: the group is tried again,
        and what ended meanwhile is done then)."""
        late = f"TICK_DEADLINE={self.limits.tick_deadline:g} s passed"
        waiting = 0
        for tick, outs in todo:
            if (
                self.clock() + timing.UNREACHABLE_DELAY
                > tick.scheduled_at + self.limits.tick_deadline
            ):
                self._give_up(ended, tick, outs, f"{late}: {exc}")
            else:
                waiting += 1
        if waiting:
            raise Later(timing.UNREACHABLE_DELAY, Tries(reason=str(exc)))
        return ended

    def _contain_group(
        self,
        ended: Ended,
        todo: Todo,
        exc: Exception,
    ) -> None:
        """An unexpected exception broke the attempt off: what it had in flight is
        unconfirmed, and every message not acked fails with the error as its reason."""
        reason = f"unexpected error: {type(exc).__name__}: {exc}"
        log.error("a group of %d ticks: %s", len(todo), reason, exc_info=exc)
        self.stream.abandon()
        self._report({})
        for tick, outs in todo:
            acked = {m for m, x in self._outcomes.items() if x.outcome is Outcome.ACKED}
            left = [o for o in outs if o.message_id not in acked]
            if left:
                self._give_up(ended, tick, left, reason)
            else:
                ended.results.append(Result(tick.message_id, tick.number, "acked", 1, self.clock()))

    def _give_up(
        self, ended: Ended, tick: message.Tick, outs: list[message.Outgoing], reason: str
    ) -> None:
        self.listener.failed(tick, outs, reason)
        log.error("tick %s failed: %s", tick.message_id, reason)
        ended.failed.append((tick, reason))
