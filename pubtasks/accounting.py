"""The accounting: every publish and outcome the tick policy reports, written to Redis.

It listens to ``policy.TickPolicy`` (the ``policy.Listener`` protocol), much as
dramatiq's middleware listens to its broker, and turns what it hears into the
counter updates of ``stats.Stats``:

- ``publishing``: each basic.publish about to be sent is counted as published and
  pending, under a key unique to that publish;
- ``settled``: each outcome is counted once (acked, nacked, returned, unconfirmed),
  and a returned message becomes the last error;
- ``failed``: each message given up is counted failed once, with its reason;
- ``done``: which of a tick's messages were counted acked, returned or failed before
  (its task is a redelivery), so that they are neither published nor counted again.

Publishes left pending by a publisher that died are counted unconfirmed by the
next publisher that looks (``reap_abandoned``).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence

from pubtasks.confirms import Delivery, Settled
from pubtasks.message import Outgoing, Tick
from pubtasks.stats import Stats

log = logging.getLogger(__name__)


def abandoned_after(confirm_timeout: float) -> float:
    """Seconds after which a pending publish belongs to a dead publisher: a live one
    settles every publish within ``confirm_timeout``."""
    return 2 * confirm_timeout + 10


class Accounting:
    """Writes what the tick policy reports to the counters in Redis."""

    def __init__(
        self, stats: Stats, publisher: str, clock: Callable[[], float] = time.time
    ) -> None:
        self.stats = stats
        self.publisher = publisher
        self.clock = clock
        self._sequence = itertools.count(1)
        self._last_reap = 0.0

    def publishing(self, tick: Tick, outs: Sequence[Outgoing]) -> list[Delivery]:
        """Count ``outs`` as published and pending, in one Redis round trip."""
        return self.publishing_many([(tick, out) for out in outs])

    def publishing_many(self, outs: Sequence[tuple[Tick, Outgoing]]) -> list[Delivery]:
        """``publishing`` for the messages of several ticks, in one Redis round trip."""
        now = self.clock()
        deliveries = [
            Delivery(
                key=f"{out.message_id}#{self.publisher}.{next(self._sequence)}",
                message_id=out.message_id,
                entry=tick.entry,
                number=out.number,
                published_at=now,
                retry_return=tick.recipe.on_return == "retry",
            )
            for tick, out in outs
        ]
        self.stats.begin(deliveries, now)
        return deliveries

    def settled(self, outcomes: Sequence[Settled]) -> None:
        """Count each outcome once, in one Redis round trip; a return is the last error."""
        now = self.clock()
        self.stats.settle(outcomes, now)
        for x in outcomes:
            if x.returned:
                d = x.delivery
                self.stats.error(d.entry, d.message_id, str(d.returned), now)
                log.warning("message %s %s", d.message_id, d.returned)

    def failed(self, tick: Tick, outs: Sequence[Outgoing], reason: str) -> None:
        """Count each message given up as failed, once, and make ``reason`` the last error."""
        failed = [(out.message_id, out.number) for out in outs]
        self.stats.fail(tick.entry, failed, reason, self.clock())

    def done(self, tick: Tick) -> set[str]:
        """The message ids of ``tick`` already counted acked, returned or failed (one
        round trip): a redelivered tick publishes only the others."""
        return self.done_many([tick])[0]

    def done_many(self, ticks: Sequence[Tick]) -> list[set[str]]:
        """``done`` of each tick, in one round trip."""
        found = self.stats.done_many([(t.message_id, t.batch) for t in ticks])
        return [
            {out.message_id for out in t.messages() if out.index in indexes}
            for t, indexes in zip(ticks, found, strict=True)
        ]

    def failed_many(self, failures: Sequence[tuple[Tick, Sequence[Outgoing], str]]) -> None:
        """``failed`` for several ticks (one round trip per tick: each has its reason)."""
        for tick, outs, reason in failures:
            self.failed(tick, outs, reason)

    def reap_abandoned(self, confirm_timeout: float) -> int:
        """Now and then, count publishes left pending by a dead publisher as unconfirmed.

        A live publisher settles every publish within ``confirm_timeout``, so anything
        pending much longer belongs to a process that was killed mid-publish.
        """
        now = self.clock()
        older_than = abandoned_after(confirm_timeout)
        if now - self._last_reap < older_than / 2:
            return 0
        self._last_reap = now
        reaped = self.stats.reap(older_than, now)
        if reaped:
            log.warning(
                "counted %d publishes left pending by a dead publisher as unconfirmed", reaped
            )
        return reaped
