"""The ledger of ticks beat has sent, until they are done: the ``beat:sent`` sorted
set (member ``SentTick``, score the time it was sent). Beat records each tick it
sends; each worker's supervisor reads the overdue ones and sends again a tick whose
task message was lost (``supervision.reconcile``). A record no replica acknowledged
is written again until one does (``keep``): a failover could lose it, and the tick's
task message with it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pubtasks import lua
from pubtasks.keys import Keys
from pubtasks.records import SentTick
from pubtasks.store import Store


class SentLedger:
    """The sent ticks of one prefix, through ``store`` (its replica wait and errors)."""

    def __init__(self, store: Store, keys: Keys) -> None:
        self.store = store
        self.keys = keys
        self._claim = store.client.register_script(lua.CLAIM)

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
        k = self.keys
        manual = trigger is not None
        member = SentTick.member_of(entry, scheduled_at, number, batch, manual)

        def queue(pipe: Any) -> None:
            if trigger is None:
                pipe.set(k.beat_last(entry), scheduled_at)
            else:
                pipe.lrem(k.beat_triggers, 0, trigger)
            pipe.zadd(k.beat_sent, {member: now})

        return self.store.replicated(queue)[1]

    def keep(self, records: Mapping[str, float]) -> bool:
        """Record again sent ticks (members, with the time each was sent) that may have
        been lost in a failover, where they are not; True once the replicas acknowledge
        them. A tick whose record was lost is then seen by ``overdue`` and, if its task
        message was lost too, sent again by a worker's supervisor. Unlike the numbering,
        this does not give up after the grace: a master that took writes alone can still
        lose its role to a restarted old one, later than the grace."""
        zadd = lambda pipe: pipe.zadd(self.keys.beat_sent, dict(records), nx=True)  # noqa: E731
        return self.store.replicated(zadd, durable=True)[1]

    def overdue(self, cutoff: float, limit: int = 2000) -> list[SentTick]:
        """Sent ticks not yet seen done, sent (or sent again) at or before ``cutoff``;
        those done meanwhile are forgotten here."""
        k = self.keys
        client = self.store.client
        with self.store.converted():
            members = client.zrangebyscore(k.beat_sent, "-inf", cutoff, 0, limit)
            ticks = [SentTick.parse(str(m)) for m in members]
            with client.pipeline(transaction=False) as pipe:
                for t in ticks:
                    pipe.bitcount(k.done(t.tick_id))
                counts = pipe.execute()
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
