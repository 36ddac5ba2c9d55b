"""URLs: checked (each error names its setting and says what to do), and masked:
no URL is ever shown with its password."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from pubtasks import defaults
from pubtasks.errors import ConfigError

AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix", "sentinel"})

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``**``, safe to log (even if malformed)."""
    return _PASSWORD.sub(r"\1**@", url)


def check_url(name: str, url: str, schemes: frozenset[str]) -> str:
    """Return ``url`` if it parses as one of ``schemes``, else raise ConfigError naming ``name``.

    Several URLs may be given, separated by ``;`` (kombu's failover URLs; Sentinels):
    each is checked. In a Redis URL only ``sentinel://`` ones may be listed.
    """
    shown = mask_url(url) if "://" in url else repr(url)
    given = [part.strip() for part in url.split(";")]
    if not all(given):
        raise ConfigError(f"{name}={shown} has an empty URL between its ';'; fix {name}")
    for part in given:
        _check_one(name, part, schemes)
    if len(given) > 1 and "sentinel" in schemes and not all(map(is_sentinel, given)):
        raise ConfigError(
            f"{name}={shown}: only sentinel:// URLs may be listed with ';' (one per "
            f"Sentinel); give one redis:// URL or the Sentinels; fix {name}"
        )
    return url


def is_sentinel(url: str) -> bool:
    """Whether ``url`` names Redis Sentinels rather than a Redis server."""
    return url.strip().startswith("sentinel://")


def _check_one(name: str, url: str, schemes: frozenset[str]) -> None:
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


def check_broker(url: str) -> str:
    """Celery's own broker must be Redis: the give-back of a dead worker's ticks and the
    resend of lost ones read its Redis transport, and beat keeps firing into it while
    RabbitMQ is down. Return it; raise ConfigError naming the setting otherwise."""
    try:
        return check_url("broker_url", url, REDIS_SCHEMES)
    except ConfigError:
        raise ConfigError(
            f"broker_url (or CELERY_BROKER_URL)={mask_url(url) if '://' in url else repr(url)}: "
            "pubtasks runs Celery on Redis only (redis://, rediss://, unix://, sentinel://; "
            "the give-back and resend of ticks read its Redis transport); remove it to use "
            "REDIS_URL, or point it at a Redis"
        ) from None


def master_name(environ: Mapping[str, str]) -> str:
    """``REDIS_MASTER_NAME``: the name Sentinel knows the master by (``mymaster``)."""
    value = environ.get("REDIS_MASTER_NAME") or defaults.REDIS_MASTER_NAME
    if any(c.isspace() for c in value) or len(value) > 255:
        raise ConfigError(
            f"REDIS_MASTER_NAME={value!r} is not a name Sentinel can know; give the name of "
            "its 'sentinel monitor' line, e.g. mymaster"
        )
    return value


def redis_db(url: str) -> int:
    """The database number of a Redis URL (of the last Sentinel's, listed with ';')."""
    last = url.rsplit(";", maxsplit=1)[-1]
    path = urlsplit(last).path.strip("/")
    query = dict(p.split("=", 1) for p in urlsplit(last).query.split("&") if "=" in p)
    raw = query.get("db") or path or "0"
    return int(raw) if raw.isdigit() else 0
