"""The exceptions pubtasks raises: one small tree, each with a one-line reason.

Library errors (kombu, py-amqp, redis-py) are converted at the boundary, in
``publisher.py`` and ``stats.py``, and raised ``from`` the original error, so a
caller only ever handles these.
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


class StatsUnavailable(BrokerError):
    """Redis did not take a statistics update, so the tick cannot be accounted for."""


class PublishError(PubtasksError):
    """A tick ended without a confirmed publish."""


class TopologyError(PublishError):
    """RabbitMQ closed the channel (404, 403, 406...): permanent, never retried."""


class TickFailed(PublishError):
    """A tick was given up after its bounded attempts; counted in ``failed``."""
