"""The RabbitMQ entities and Redis keys one bench run owns, all named after its id."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Names:
    """The exchange, queues and key prefix of one run."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def exchange(self) -> str:
        return f"pubtasks-bench-{self.run}"

    def queue(self, part: str) -> str:
        return f"pubtasks-bench-{self.run}-{part}"

    @property
    def prefix(self) -> str:
        return f"pubtasks-bench:{self.run}:"
