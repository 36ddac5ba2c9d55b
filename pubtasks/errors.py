"""The exceptions pubtasks raises: one small tree, each with a one-line reason.

Library errors are converted at the boundary, and raised ``from`` the original:
kombu's and py-amqp's in ``stream.py``, redis-py's in ``store.py``. A caller
only ever handles these.

::

    PubtasksError
    ├── ConfigError
    ├── BrokerError
    │   ├── Unreachable
    │   ├── AccessRefused
    │   │   └── TlsRefused
    │   ├── ChannelLost
    │   └── StatsUnavailable
    └── PublishError
        ├── TopologyError
        ├── BodyError
        └── TickFailed
"""

from __future__ import annotations


class PubtasksError(Exception):
    """Base class of every error pubtasks raises on purpose."""


class ConfigError(PubtasksError):
    """A setting is missing or malformed; the message names the setting."""


class BrokerError(PubtasksError):
    """RabbitMQ or Redis could not be used."""


class Unreachable(BrokerError):
    """A service did not accept connections within the retry budget."""


class AccessRefused(BrokerError):
    """RabbitMQ refused the credentials (ACCESS_REFUSED); retrying will not help."""


class TlsRefused(AccessRefused):
    """TLS failed: a certificate not verified, a host name that does not match, TLS
    spoken to a plain port; retrying will not help."""


class ChannelLost(BrokerError):
    """The channel or its connection went away mid-publish; what it had in flight is
    unconfirmed. ``permanent`` when RabbitMQ closed it for a reason retrying cannot fix."""

    def __init__(self, reason: str, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class StatsUnavailable(BrokerError):
    """Redis did not take a statistics update, so the tick cannot be accounted for."""


class NotReplicated(StatsUnavailable):
    """Redis took a write that must survive a failover, but no replica acknowledged it."""


class PublishError(PubtasksError):
    """A tick ended without a confirmed publish."""


class TopologyError(PublishError):
    """RabbitMQ refused a declaration (404, 403, 406...): permanent, never retried."""


class BodyError(PublishError):
    """A message body could not be made: a payload function raised, or returned (or an
    entry gave) a value its serializer cannot encode."""


class TickFailed(PublishError):
    """A tick was given up after its bounded attempts; counted in ``failed``."""


def kind_of(value: object) -> str:
    """The type of ``value`` with its article, for an error line: "an int", "a str"."""
    name = type(value).__name__
    return f"an {name}" if name[:1] in "aeiou" else f"a {name}"
