"""How far a tick got before it was given back to wait, and how long it waits: the
backoffs after a nack and after a return. Pure: no I/O, no sleeping (``policy``)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pubtasks import message, timing


@dataclass(frozen=True)
class Tries:
    """How far a tick got before it was given back to wait; the next ``publish`` of the
    tick goes on from here (the publish task carries it in its kwargs, ``as_kwargs``)."""

    attempt: int = 0  # attempts used, of PUBLISH_ATTEMPTS
    bounces: int = 0  # times its messages were returned and published again
    reason: str = "no attempt made"  # why the last attempt did not end it
    #: The payload's bodies, by message_id: made once per tick, so that every attempt
    #: publishes the same body under the same message_id.
    bodies: Mapping[str, message.Body] = field(default_factory=dict)

    def at(self, attempt: int, bounces: int, reason: str = "") -> Tries:
        """These tries, moved on (the bodies kept)."""
        return replace(self, attempt=attempt, bounces=bounces, reason=reason or self.reason)

    def as_kwargs(self) -> dict[str, Any]:
        """JSON-safe keyword arguments for the publish task (``of`` reads them back)."""
        kwargs: dict[str, Any] = {
            "attempt": self.attempt,
            "bounces": self.bounces,
            "reason": self.reason,
        }
        if self.bodies:
            kwargs["bodies"] = {
                m: [base64.b64encode(b.data).decode(), b.content_type, b.content_encoding]
                for m, b in self.bodies.items()
            }
        return kwargs

    @classmethod
    def of(
        cls,
        attempt: int = 0,
        bounces: int = 0,
        reason: str | None = None,
        bodies: Mapping[str, Sequence[Any]] | None = None,
    ) -> Tries:
        """The tries that ``as_kwargs`` wrote."""
        made = {
            m: message.Body(base64.b64decode(data), content_type, encoding)
            for m, (data, content_type, encoding) in (bodies or {}).items()
        }
        return cls(int(attempt), int(bounces), reason or cls.reason, made)


class Later(Exception):
    """The tick must wait ``delay`` seconds before its next attempt, which goes on from
    ``tries``. Raised instead of sleeping, so that the caller can give the worker process
    back meanwhile. Everything published so far is settled and counted."""

    def __init__(self, delay: float, tries: Tries) -> None:
        super().__init__(f"next attempt in {delay:.2f} s: {tries.reason}")
        self.delay = delay
        self.tries = tries


def nack_backoff(attempt: int) -> float:
    """Seconds to wait before attempt ``attempt + 1`` after a nack: 0.5, 1, 2, then 4.

    Before the fifth attempt (PUBLISH_ATTEMPTS' default) the nacks have been waited on
    for 7.5 s in all: far longer than a quorum queue's leader election after its
    leader's node was killed (``scripts/quorum_election.py`` measures it on the 3-node
    cluster: under 0.5 s on one machine; a host lost silently is noticed after Erlang's
    net tick time, 60 s by default, which no backoff should wait out). At most
    ``timing.NACK_BACKOFF_MAX`` (4 s), below ``timing.GIVE_BACK_GRACE``: Celery 5.6
    does not list a task that waits for its countdown among those its worker holds.
    """
    return timing.NACK_BACKOFF.delay(attempt)


def return_backoff(bounces: int) -> float:
    """Seconds to wait before publishing a returned message again: 0.1, 0.2, 0.4... at
    most ``timing.RETURN_BACKOFF_MAX`` (2)."""
    return timing.RETURN_BACKOFF.delay(bounces)
