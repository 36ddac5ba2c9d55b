"""What pubtasks reads back from Redis: the read models of the counters, the skips,
the ticks beat sent, and where a beat goes on from. Pure: no I/O here."""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pubtasks.ids import message_id, scheduled_at_of
from pubtasks.keys import COUNTERS, LATENCY_BUCKETS, SKIPPED, TICKS
from pubtasks.schedule import REASONS, Run


@dataclass(frozen=True)
class SentTick:
    """A tick beat has sent, as ``beat:sent`` holds it."""

    member: str
    entry: str
    scheduled_at: float
    number: int
    batch: int
    manual: bool = False

    @classmethod
    def parse(cls, member: str) -> SentTick:
        entry, scheduled_at, number, batch, *manual = json.loads(member)
        return cls(member, str(entry), float(scheduled_at), int(number), int(batch), bool(manual))

    @staticmethod
    def member_of(entry: str, scheduled_at: float, number: int, batch: int, manual: bool) -> str:
        """``json.dumps([entry, scheduled_at, number, batch(, true)])``, made by hand: beat
        makes one per tick it sends (10,000 a burst), and json.dumps of a list costs
        several times more."""
        at = json.dumps(scheduled_at)
        return (
            f"[{json.dumps(entry)}, {at}, {int(number)}, {int(batch)}{', true' if manual else ''}]"
        )

    @property
    def tick_id(self) -> str:
        return message_id(self.entry, self.scheduled_at, self.manual)


@dataclass(frozen=True)
class Skip:
    """A run of an entry's ticks skipped, as ``skips:<entry>`` holds it: why
    (``schedule.REASONS``), the scheduled times of its first and last tick (seconds),
    how many ticks of the schedule from ``first`` to ``last``, both included, and when
    it was recorded."""

    reason: str
    first: float
    last: float
    count: int
    at: float

    @classmethod
    def of(cls, run: Run, at: float) -> Skip:
        return cls(run.reason, run.first, run.last, run.count, at)

    @classmethod
    def parse(cls, record: str) -> Skip:
        r = json.loads(record)
        return cls(
            str(r["reason"]), float(r["first"]), float(r["last"]), int(r["count"]), float(r["at"])
        )

    def record(self) -> str:
        return json.dumps(
            {
                "reason": self.reason,
                "first": self.first,
                "last": self.last,
                "count": self.count,
                "at": self.at,
            }
        )


@dataclass(frozen=True)
class ResumePoint:
    """What a beat that takes the beat lock goes on from, for one entry, read at once:
    ``beat:last:<entry>`` and ``beat:number:<entry>`` as stored (the compare of
    ``Stats.skip``), whether it is paused, and when it was last resumed."""

    last: str | None = None
    numbered: str | None = None
    paused: bool = False
    resumed_at: float | None = None

    @property
    def last_at(self) -> float | None:
        """The scheduled time of the entry's last tick sent or skipped."""
        return None if self.last is None else float(self.last)

    @property
    def numbered_at(self) -> float | None:
        """The scheduled time of the entry's latest tick numbered (maybe not sent)."""
        if self.numbered is None:
            return None
        return scheduled_at_of(self.numbered.rpartition(" ")[0])


@dataclass(frozen=True)
class Counts:
    """The counters of the totals or of one entry, with ``pending`` measured."""

    published: int = 0
    acked: int = 0
    nacked: int = 0
    returned: int = 0
    unconfirmed: int = 0
    failed: int = 0
    pending: int = 0
    ticks: int = 0
    ticks_late: int = 0
    ticks_manual: int = 0
    skipped: int = 0
    skipped_paused: int = 0
    skipped_catch_up: int = 0
    skipped_window: int = 0
    skipped_overlap: int = 0
    last_confirmed_number: int | None = None
    last_confirmed_at: float | None = None

    @classmethod
    def from_hash(cls, raw: dict[str, str], pending: int) -> Counts:
        """The counters of ``raw``; ``pending`` is counted in the pending set, not derived."""
        counters = {name: int(raw.get(name, 0)) for name in COUNTERS + TICKS + SKIPPED}
        number = raw.get("last_confirmed_number")
        at = raw.get("last_confirmed_at")
        return cls(
            **counters,
            pending=pending,
            last_confirmed_number=int(number) if number else None,
            last_confirmed_at=float(at) if at else None,
        )

    @property
    def invariant_holds(self) -> bool:
        """published == acked + nacked + unconfirmed + pending."""
        return self.published == self.acked + self.nacked + self.unconfirmed + self.pending

    def skipped_by(self) -> dict[str, int]:
        """The ticks skipped, by reason (``schedule.REASONS``)."""
        return {reason: int(getattr(self, f"skipped_{reason}")) for reason in REASONS}


@dataclass(frozen=True)
class Latency:
    """One entry's tick-to-confirm latency histogram, as Prometheus wants it: cumulative
    counts per upper bound (``LATENCY_BUCKETS``, then infinity), their count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float

    @classmethod
    def from_hash(cls, raw: dict[str, str]) -> Latency:
        """From the ``latency:<entry>`` hash: a count per bucket, each field an upper bound."""
        per = Counter({float(k): int(v) for k, v in raw.items() if k not in ("count", "sum")})
        running, cumulative = 0, []
        for le in (*LATENCY_BUCKETS, math.inf):
            running += per[le]
            cumulative.append((le, running))
        return cls(tuple(cumulative), int(raw.get("count", 0)), float(raw.get("sum", 0.0)))


@dataclass(frozen=True)
class Snapshot:
    """Everything ``pubtasks stats`` shows, read in one round trip."""

    totals: Counts
    last_message_number: int
    oldest_pending_at: float | None
    last_error: dict[str, str]
    entries: dict[str, Counts] = field(default_factory=dict)

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        t = self.totals
        return {
            "published": t.published,
            "acked": t.acked,
            "nacked": t.nacked,
            "returned": t.returned,
            "unconfirmed": t.unconfirmed,
            "pending": t.pending,
            "failed": t.failed,
            **{name: getattr(t, name) for name in SKIPPED},
            "invariant_holds": t.invariant_holds,
            "last_message_number": self.last_message_number,
            "last_confirmed_number": t.last_confirmed_number,
            "last_confirmed_at": t.last_confirmed_at,
            "oldest_pending_age": (
                None if self.oldest_pending_at is None else round(now - self.oldest_pending_at, 3)
            ),
            "last_error": self.last_error or None,
            "entries": {
                name: {
                    "published": c.published,
                    "acked": c.acked,
                    "nacked": c.nacked,
                    "returned": c.returned,
                    "unconfirmed": c.unconfirmed,
                    "pending": c.pending,
                    "failed": c.failed,
                    **{name: getattr(c, name) for name in SKIPPED},
                    "last_confirmed_number": c.last_confirmed_number,
                    "last_confirmed_at": c.last_confirmed_at,
                }
                for name, c in sorted(self.entries.items())
            },
        }
