"""The ledger of ticks beat has sent, until they are done: the ``beat:sent`` sorted
set (member ``SentTick``, score the time it was sent). Beat records each tick it
sends; each worker's supervisor reads the overdue ones and sends again a tick whose
task message was lost (``supervision.reconcile``). A record no replica acknowledged
is written again until one does (``keep``): a failover could lose it, and the tick's
task message with it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from pubtasks import lua
from pubtasks.keys import Keys
from pubtasks.records import SentTick
from pubtasks.store import Store


class Sent(NamedTuple):
    """A tick beat sent (``SentLedger.record_many``); ``trigger``: its request, if by hand."""

    entry: str
    scheduled_at: float
    number: int
    batch: int
    trigger: str | None = None


class SentLedger:
    """The sent ticks of one prefix, through ``store`` (its replica wait and errors)."""

    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys
        self._claim = store.client.register_script(lua.CLAIM)
        self._record = store.client.register_script(lua.RECORD)
        self._counts = store.client.register_script(lua.DONE_COUNTS)

    def record(
        self,
        entry: str,
        scheduled_at: float,
        number: int,
        batch: int,
        now: float,
        *,
        trigger: str | None = None,
    ) -> bool:
        """Beat sent this tick: where the next beat goes on from, and one to see done.
        ``trigger`` is the request (``beat:triggers``) of a tick fired by hand, now done.
        Whether the replicas acknowledged the record (else ``keep`` it later)."""
        return self.record_many([Sent(entry, scheduled_at, number, batch, trigger)], now)

    def record_many(self, ticks: Sequence[Sent], now: float) -> bool:
        """``record`` of ticks sent together (a burst), in one round trip and one replica
        wait; in order, so an entry's last tick is the one it goes on from."""
        k = self.keys
        records = []
        for t in ticks:
            manual = t.trigger is not None
            member = SentTick.member_of(t.entry, t.scheduled_at, t.number, t.batch, manual)
            records.append([t.entry, repr(t.scheduled_at), member, t.trigger or ""])
        args: list[Any] = [now, k.beat_last(""), json.dumps(records)]
        keys = [k.beat_sent, k.beat_triggers]
        record = lambda pipe: self._record(keys=keys, args=args, client=pipe)  # noqa: E731
        return self.store.replicated(record)[1]

    def keep(self, records: Mapping[str, float]) -> bool:
        """Record again sent ticks (members, with the time each was sent) that may have
        been lost in a failover, where they are not; True once the replicas acknowledge
        them. A tick whose record was lost is then seen by ``overdue`` and, if its task
        message was lost too, sent again by a worker's supervisor. Unlike the numbering,
        this does not give up after the grace: a master that took writes alone can still
        lose its role to a restarted old one, later than the grace."""
        zadd = lambda pipe: pipe.zadd(self.keys.beat_sent, dict(records), nx=True)  # noqa: E731
        return self.store.replicated(zadd, durable=True)[1]

    def overdue(self, cutoff: float, limit: int = 20_000) -> list[SentTick]:
        """Sent ticks not yet seen done, sent (or sent again) at or before ``cutoff``;
        those done meanwhile are forgotten here."""
        k = self.keys
        client = self.store.client
        with self.store.converted():
            members = client.zrangebyscore(k.beat_sent, "-inf", cutoff, 0, limit)
            ticks = [SentTick.parse(str(m)) for m in members]
            if not ticks:
                return []
            done = [k.done(t.tick_id) for t in ticks]
            counts = [int(n) for n in str(self._counts(keys=done)).split()]
            finished = [t.member for t, n in zip(ticks, counts, strict=True) if n >= t.batch]
            if finished:
                client.zrem(k.beat_sent, *finished)
        return [t for t, n in zip(ticks, counts, strict=True) if n < t.batch]

    def forget(self, tick: SentTick) -> None:
        with self.store.converted():
            self.store.client.zrem(self.keys.beat_sent, tick.member)

    def claim(self, tick: SentTick, cutoff: float, now: float) -> bool:
        """Take an overdue tick for sending again; False if another worker just did."""
        args: list[Any] = [cutoff, now, tick.member]
        return bool(self.store.run(self._claim, [self.keys.beat_sent], args))
