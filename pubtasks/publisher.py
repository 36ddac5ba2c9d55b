"""The publisher: the confirm stream, the tick policy and the accounting, wired together.

A worker keeps one per thread that runs publish tasks (``tasks.PublishTask``), so
no tick opens a connection of its own: each stream is one long-lived kombu
connection, which reconnects through kombu's ``ensure_connection`` with a bounded
backoff (0, 0.25, 0.5... at most 1 s apart), so publishing resumes by itself
within about a second of RabbitMQ coming back.
"""

from __future__ import annotations

from pubtasks.accounting import Accounting
from pubtasks.group import Ended, GroupPolicy
from pubtasks.ids import owner_id
from pubtasks.lanes import Lanes
from pubtasks.message import Tick
from pubtasks.policy import Limits, Result
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from pubtasks.stream import ConfirmStream, Options
from pubtasks.topology import Topology
from pubtasks.tries import Tries


class Publisher:
    """Publishes ticks over one confirm stream and counts everything in Redis."""

    def __init__(self, settings: Settings, stats: Stats | None = None) -> None:
        self.settings = settings
        self._owns_stats = stats is None
        self.stats = stats or Stats.of(settings)
        self.stream = ConfirmStream(
            Options.from_settings(settings), Topology.from_settings(settings)
        )
        self.accounting = Accounting(self.stats, owner_id())
        self.policy = GroupPolicy(self.stream, self.accounting, Limits.from_settings(settings))
        self.lanes = Lanes(self.stats)

    def publish_tick(self, tick: Tick, tries: Tries | None = None) -> Result:
        """Publish one tick (see ``policy.TickPolicy.publish``), then look for orphans."""
        self.accounting.reap_abandoned(self.settings.confirm_timeout)
        return self.policy.publish(tick, tries)

    def publish_group(self, ticks: list[Tick]) -> Ended:
        """Publish ticks due together as one group (``group.GroupPolicy.publish_group``)."""
        self.accounting.reap_abandoned(self.settings.confirm_timeout)
        return self.policy.publish_group(ticks)

    def refuse(self, tick: Tick, reason: str) -> None:
        """Count a tick that cannot be published at all (its kwargs are wrong) as failed."""
        self.accounting.failed(tick, tick.messages(), reason)

    def close(self) -> None:
        self.stream.close()
        if self._owns_stats:
            self.stats.close()
