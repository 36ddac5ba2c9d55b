"""What each outcome of a publish does to the counters: one pure table.

The settle script (``lua.SETTLE``) is rendered from it, so the table is the one
place the mapping is written. An outcome adds one to each of its counters (in the
totals and in its entry's), may mark its message done (a redelivered tick then
publishes only what is not done), and may add its tick-to-confirm latency to its
entry's histogram.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pubtasks.confirms import Settled


@dataclass(frozen=True)
class Effect:
    """What settling one publish with an outcome changes."""

    counters: tuple[str, ...]
    done: bool  # the message is marked done
    latency: bool  # its tick-to-confirm latency is observed (it was acked)


EFFECTS: Final = {
    # RabbitMQ confirmed it.
    "acked": Effect(("acked",), done=True, latency=True),
    # Acked, but no queue took it (basic.return), and its entry counts it and moves on.
    "returned": Effect(("acked", "returned"), done=True, latency=True),
    # Acked and returned, and its entry publishes it again: not done yet.
    "bounced": Effect(("acked", "returned"), done=False, latency=True),
    # RabbitMQ refused it (basic.nack); the policy publishes it again or fails it.
    "nacked": Effect(("nacked",), done=False, latency=False),
    # No answer came (a lost channel or connection, or CONFIRM_TIMEOUT).
    "unconfirmed": Effect(("unconfirmed",), done=False, latency=False),
}


def lua_table() -> str:
    """``EFFECTS`` as a Lua table, for the settle script."""
    rows = []
    for outcome, e in EFFECTS.items():
        counters = ", ".join(f"'{c}'" for c in e.counters)
        rows.append(
            f"{outcome} = {{counters = {{{counters}}}, done = {str(e.done).lower()}, "
            f"latency = {str(e.latency).lower()}}}"
        )
    return "local EFFECTS = {\n  " + ",\n  ".join(rows) + "\n}\n"


def outcome_of(settled: Settled) -> str:
    """The row of ``EFFECTS`` a settled publish counts under: a returned message by
    whether its entry publishes it again (bounced) or counts it (returned), any other
    by how RabbitMQ answered."""
    if settled.returned:
        return "bounced" if settled.delivery.retry_return else "returned"
    return settled.outcome.value
