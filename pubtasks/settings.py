"""Settings: the environment and celeryconfig, read and checked once at start.

Environment variables (``AMQP_URL``, ``REDIS_URL``, ``PUBLISH_INTERVAL``) are read
when the worker, beat or a CLI command starts, never at import. The rest comes
from ``celeryconfig.py`` (upper-case names, see ``pubtasks.defaults``).
Every error names the setting and says what to do; no URL is ever shown with
its password.

Settings are loaded once per process, where it starts (the worker, beat, a CLI
command: see ``pubtasks.celery.App.settings``), and passed down from there.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pubtasks import defaults
from pubtasks.errors import ConfigError

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})
EXCHANGE_TYPES = frozenset({"direct", "topic", "fanout", "headers"})


_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``**``, safe to log (even if malformed)."""
    return _PASSWORD.sub(r"\1**@", url)


def check_url(name: str, url: str, schemes: frozenset[str]) -> str:
    """Return ``url`` if it parses as one of ``schemes``, else raise ConfigError naming ``name``."""
    shown = mask_url(url) if "://" in url else repr(url)
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as exc:
        raise ConfigError(f"{name}={shown} is malformed ({exc}); fix {name}") from None
    if parts.scheme not in schemes:
        want = ", ".join(f"{s}://" for s in sorted(schemes))
        raise ConfigError(f"{name}={shown} is not a URL of the form {want}...; fix {name}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{name}={shown} has no host; fix {name}")
    return url


def parse_interval(name: str, raw: str) -> float:
    """Parse a positive, finite number of seconds, or raise ConfigError naming ``name``."""
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"{name}={raw!r} is not a number; set it to a positive number of seconds, e.g. 1 or 0.5"
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={raw!r} must be a positive number of seconds, e.g. 1 or 0.5")
    return value


def _positive(name: str, value: Any, kind: type[int] | type[float]) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} in celeryconfig.py is not a {kind.__name__}") from None
    if not math.isfinite(number) or number <= 0:
        raise ConfigError(f"{name}={value!r} in celeryconfig.py must be positive")
    return number


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} in celeryconfig.py must be True or False")
    return value


def _name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ConfigError(f"{name}={value!r} in celeryconfig.py must be a non-empty string")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything pubtasks needs to run; safe to print (URLs are masked)."""

    amqp_url: str = field(default=defaults.AMQP_URL, repr=False)
    redis_url: str = field(default=defaults.REDIS_URL, repr=False)
    publish_interval: float = defaults.PUBLISH_INTERVAL
    exchange: str = defaults.EXCHANGE
    exchange_type: str = defaults.EXCHANGE_TYPE
    queue: str = defaults.QUEUE
    routing_key: str = defaults.ROUTING_KEY
    binding_key: str = defaults.ROUTING_KEY
    stats_prefix: str = defaults.STATS_PREFIX
    confirm_timeout: float = defaults.CONFIRM_TIMEOUT
    publish_attempts: int = defaults.PUBLISH_ATTEMPTS
    publish_batch: int = defaults.PUBLISH_BATCH
    confirm_window: int = defaults.CONFIRM_WINDOW
    batch_writes: bool = defaults.BATCH_WRITES
    tick_deadline: float = defaults.TICK_DEADLINE
    startup_retries: int = defaults.STARTUP_RETRIES

    @property
    def amqp_url_masked(self) -> str:
        return mask_url(self.amqp_url)

    @property
    def redis_url_masked(self) -> str:
        return mask_url(self.redis_url)

    def __str__(self) -> str:
        return (
            f"AMQP_URL={self.amqp_url_masked} REDIS_URL={self.redis_url_masked} "
            f"PUBLISH_INTERVAL={self.publish_interval:g}s exchange={self.exchange!r} "
            f"({self.exchange_type}) queue={self.queue!r} routing_key={self.routing_key!r} "
            f"prefix={self.stats_prefix!r}"
        )

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, conf: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build settings from the environment and celeryconfig values, checking each."""
        env = os.environ if environ is None else environ
        cfg: Mapping[str, Any] = {} if conf is None else conf

        def opt(key: str, default: Any) -> Any:
            value = cfg.get(key)
            return default if value is None else value

        exchange_type = opt("EXCHANGE_TYPE", defaults.EXCHANGE_TYPE)
        if exchange_type not in EXCHANGE_TYPES:
            raise ConfigError(
                f"EXCHANGE_TYPE={exchange_type!r} in celeryconfig.py must be one of "
                + ", ".join(sorted(EXCHANGE_TYPES))
            )
        routing_key = _name("ROUTING_KEY", opt("ROUTING_KEY", defaults.ROUTING_KEY))
        return cls(
            amqp_url=check_url("AMQP_URL", env.get("AMQP_URL") or defaults.AMQP_URL, AMQP_SCHEMES),
            redis_url=check_url(
                "REDIS_URL", env.get("REDIS_URL") or defaults.REDIS_URL, REDIS_SCHEMES
            ),
            publish_interval=parse_interval(
                "PUBLISH_INTERVAL", env.get("PUBLISH_INTERVAL") or str(defaults.PUBLISH_INTERVAL)
            ),
            exchange=_name("EXCHANGE", opt("EXCHANGE", defaults.EXCHANGE)),
            exchange_type=exchange_type,
            queue=_name("QUEUE", opt("QUEUE", defaults.QUEUE)),
            routing_key=routing_key,
            binding_key=_name("BINDING_KEY", opt("BINDING_KEY", routing_key)),
            stats_prefix=_name("STATS_PREFIX", opt("STATS_PREFIX", defaults.STATS_PREFIX)),
            confirm_timeout=_positive(
                "CONFIRM_TIMEOUT", opt("CONFIRM_TIMEOUT", defaults.CONFIRM_TIMEOUT), float
            ),
            publish_attempts=_positive(
                "PUBLISH_ATTEMPTS", opt("PUBLISH_ATTEMPTS", defaults.PUBLISH_ATTEMPTS), int
            ),
            publish_batch=_positive(
                "PUBLISH_BATCH", opt("PUBLISH_BATCH", defaults.PUBLISH_BATCH), int
            ),
            confirm_window=_positive(
                "CONFIRM_WINDOW", opt("CONFIRM_WINDOW", defaults.CONFIRM_WINDOW), int
            ),
            batch_writes=_flag("BATCH_WRITES", opt("BATCH_WRITES", defaults.BATCH_WRITES)),
            tick_deadline=_positive(
                "TICK_DEADLINE", opt("TICK_DEADLINE", defaults.TICK_DEADLINE), float
            ),
            startup_retries=_positive(
                "STARTUP_RETRIES", opt("STARTUP_RETRIES", defaults.STARTUP_RETRIES), int
            ),
        )
