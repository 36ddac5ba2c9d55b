"""Which reserved deliveries nobody holds any more: the pure half of ``supervision``.

Celery's Redis transport keeps every delivered task in its ``unacked`` hash until
the worker acks it. Each live worker says which of those it holds (its heartbeat);
a delivery that no live worker holds, for longer than a grace period, belonged to
a worker that died: it is given back to the queue. The grace is measured on the
observer's own monotonic clock, so the clocks of other machines do not matter,
and it covers a delivery that its worker has received but not yet reported.
"""

from __future__ import annotations

from collections.abc import Set


class Orphans:
    """Deliveries in ``unacked`` that no live worker holds, and since when."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._since: dict[str, float] = {}

    def update(self, unacked: Set[str], held: Set[str], now: float) -> list[str]:
        """Take one look; return the deliveries unheld for ``grace`` seconds or more
        (forgotten here once returned: the caller gives them back)."""
        self._since = {tag: self._since.get(tag, now) for tag in unacked - held}
        due = sorted(tag for tag, since in self._since.items() if now - since >= self.grace)
        for tag in due:
            del self._since[tag]
        return due
