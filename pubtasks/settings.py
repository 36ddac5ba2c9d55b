"""Settings: the environment and celeryconfig, read and checked once at start.

Environment variables (``AMQP_URL``, ``REDIS_URL``, ``REDIS_MASTER_NAME``,
``PUBLISH_INTERVAL``) are read when the worker, beat or a CLI command starts,
never at import. The rest comes from ``celeryconfig.py`` (upper-case names, see
``pubtasks.defaults``).
Every error names the setting and says what to do; no URL is ever shown with
its password.

The topology is kombu ``Queue`` and ``Exchange`` objects (``QUEUES`` and
``EXCHANGES``), or the shorthand of one exchange and one queue (``EXCHANGE``,
``EXCHANGE_TYPE``, ``QUEUE``, ``BINDING_KEY``) when there is no ``QUEUES``. The
schedule's publish entries are checked against it (``entries.py``).

Settings are loaded once per process, where it starts (the worker, beat, a CLI
command: see ``pubtasks.celery.App.settings``), and passed down from there.
"""

from __future__ import annotations

import difflib
import math
import os
import ssl
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from kombu.entity import Exchange, Queue, binding

from pubtasks import defaults
from pubtasks.entries import Context, check_schedule
from pubtasks.errors import ConfigError, kind_of
from pubtasks.message import Recipe
from pubtasks.tls import amqp_ssl
from pubtasks.urls import (
    AMQP_SCHEMES,
    REDIS_SCHEMES,
    check_broker,
    check_url,
    is_sentinel,
    mask_url,
    master_name,
)

EXCHANGE_TYPES = frozenset({"direct", "topic", "fanout", "headers"})
#: The upper-case names pubtasks reads from celeryconfig.py.
CONFIG_NAMES = frozenset({
    "EXCHANGE", "EXCHANGE_TYPE", "QUEUE", "ROUTING_KEY", "BINDING_KEY", "QUEUE_TYPE",
    "QUEUES", "EXCHANGES", "STATS_PREFIX", "CONFIRM_TIMEOUT", "PUBLISH_ATTEMPTS",
    "PUBLISH_BATCH", "CONFIRM_WINDOW", "BATCH_WRITES", "TICK_DEADLINE", "ON_RETURN",
    "REDIS_WAIT_REPLICAS", "STARTUP_RETRIES", "DECLARE", "AMQP_SSL",
})  # fmt: skip
#: The names pubtasks reads from the environment only.
ENV_NAMES = frozenset({
    "AMQP_URL", "REDIS_URL", "AMQP_URL_FILE", "REDIS_URL_FILE", "REDIS_MASTER_NAME",
    "PUBLISH_INTERVAL",
})  # fmt: skip
#: The shorthand for one exchange and one queue, which QUEUES replaces.
SHORTHAND = ("EXCHANGE_TYPE", "QUEUE", "BINDING_KEY", "QUEUE_TYPE")


def url_of(environ: Mapping[str, str], name: str, default: str) -> str:
    """The URL of environment variable ``name``, or read from the file ``name``_FILE
    names (Docker's secrets convention: ``AMQP_URL_FILE=/run/secrets/amqp_url``), its
    surrounding whitespace stripped; ``default`` when neither is set. Not checked."""
    given, path = environ.get(name), environ.get(f"{name}_FILE")
    if not path:
        return given or default
    if given:
        raise ConfigError(f"{name} and {name}_FILE are both set; set one of them")
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(
            f"{name}_FILE={path!r} cannot be read ({reason}); give the path of a file that "
            f"holds the URL"
        ) from None
    if not text or "\n" in text:
        raise ConfigError(
            f"{name}_FILE={path!r} must hold one URL on one line; it holds "
            + ("nothing" if not text else f"{len(text.splitlines())} lines")
        )
    return text


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


def _given(cfg: Mapping[str, Any], key: str, default: Any) -> Any:
    """A celeryconfig value, or ``default`` when it is not set (None counts as not set)."""
    value = cfg.get(key)
    return default if value is None else value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} in celeryconfig.py must be True or False")
    return value


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name}={value!r} in celeryconfig.py must be a whole number, 0 or more")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(
            f"{name}={value!r} in celeryconfig.py must be one of "
            + ", ".join(repr(c) for c in choices)
        )
    return str(value)


def _name(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 255:
        raise ConfigError(f"{name}={value!r} in celeryconfig.py must be a non-empty string")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything pubtasks needs to run; safe to print (URLs are masked)."""

    amqp_url: str = field(default=defaults.AMQP_URL, repr=False)
    redis_url: str = field(default=defaults.REDIS_URL, repr=False)
    redis_master_name: str = defaults.REDIS_MASTER_NAME  # with a sentinel:// REDIS_URL
    #: Replicas each counter write waits for (Redis WAIT); None: 1 with Sentinel, else 0.
    redis_wait_replicas: int | None = None
    publish_interval: float = defaults.PUBLISH_INTERVAL
    exchange: str = defaults.EXCHANGE  # where an entry publishes unless it says otherwise
    routing_key: str = defaults.ROUTING_KEY  # with this key, unless it says otherwise
    exchanges: tuple[Exchange, ...] = field(default_factory=lambda: shorthand()[0])
    queues: tuple[Queue, ...] = field(default_factory=lambda: shorthand()[1])
    recipes: Mapping[str, Recipe] = field(default_factory=dict)  # the publish entries'
    stats_prefix: str = defaults.STATS_PREFIX
    confirm_timeout: float = defaults.CONFIRM_TIMEOUT
    publish_attempts: int = defaults.PUBLISH_ATTEMPTS
    publish_batch: int = defaults.PUBLISH_BATCH
    confirm_window: int = defaults.CONFIRM_WINDOW
    batch_writes: bool = defaults.BATCH_WRITES
    tick_deadline: float = defaults.TICK_DEADLINE
    on_return: str = defaults.ON_RETURN  # an entry's, unless it says otherwise
    startup_retries: int = defaults.STARTUP_RETRIES
    declare: str = defaults.DECLARE  # all, passive (check they exist) or none
    #: AMQP_SSL checked (``tls.amqp_ssl``): kombu's ``Connection(ssl=...)``; None: plain
    #: TCP, or with an amqps:// URL the system's CAs and the URL's host name.
    amqp_ssl: Mapping[str, Any] | None = field(default=None, repr=False)

    @property
    def amqp_tls(self) -> dict[str, Any] | bool:
        """What kombu's ``Connection(ssl=...)`` takes: AMQP_SSL, or for an amqps:// URL
        without it, verification against the system's CAs and of the host name."""
        if self.amqp_ssl is not None:
            return dict(self.amqp_ssl)
        if self.amqp_url.startswith("amqps://"):
            return {"cert_reqs": ssl.CERT_REQUIRED, "server_hostname": None}
        return False

    @property
    def amqp_url_masked(self) -> str:
        return mask_url(self.amqp_url)

    @property
    def redis_url_masked(self) -> str:
        return mask_url(self.redis_url)

    @property
    def wait_replicas(self) -> int:
        """Replicas each counter write waits for: REDIS_WAIT_REPLICAS, or 1 with Sentinel."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if is_sentinel(self.redis_url) else 0

    @cached_property
    def context(self) -> Context:
        """What a schedule entry is checked against (``entries.recipe``)."""
        return Context(
            frozenset(declared_exchanges(self)),
            self.exchange,
            self.routing_key,
            self.on_return,
            self.publish_interval,
        )

    def __str__(self) -> str:
        queues = ",".join(q.name for q in self.queues) or "none"
        return (
            f"AMQP_URL={self.amqp_url_masked} REDIS_URL={self.redis_url_masked} "
            f"PUBLISH_INTERVAL={self.publish_interval:g}s exchanges="
            f"{','.join(sorted(declared_exchanges(self))) or 'none'} queues={queues} "
            f"entries={','.join(self.recipes) or 'none'} prefix={self.stats_prefix!r}"
        )

    @classmethod
    def load(
        cls,
        environ: Mapping[str, str] | None = None,
        conf: Mapping[str, Any] | None = None,
        known_tasks: Collection[str] | None = None,
    ) -> Settings:
        """Build settings from the environment and celeryconfig values, checking each.

        ``known_tasks``: the app's registered task names, which schedule entries may
        name besides ``pubtasks.publish``.
        """
        env = os.environ if environ is None else environ
        cfg: Mapping[str, Any] = {} if conf is None else conf

        def opt(key: str, default: Any) -> Any:
            return _given(cfg, key, default)

        routing_key = _name("ROUTING_KEY", opt("ROUTING_KEY", defaults.ROUTING_KEY))
        exchange = _name("EXCHANGE", opt("EXCHANGE", defaults.EXCHANGE))
        exchanges, queues = topology(cfg, exchange, routing_key)
        loaded = cls(
            amqp_url=check_url(
                "AMQP_URL", url_of(env, "AMQP_URL", defaults.AMQP_URL), AMQP_SCHEMES
            ),
            redis_url=check_url(
                "REDIS_URL", url_of(env, "REDIS_URL", defaults.REDIS_URL), REDIS_SCHEMES
            ),
            redis_master_name=master_name(env),
            redis_wait_replicas=(
                None
                if cfg.get("REDIS_WAIT_REPLICAS") is None
                else _count("REDIS_WAIT_REPLICAS", cfg["REDIS_WAIT_REPLICAS"])
            ),
            publish_interval=parse_interval(
                "PUBLISH_INTERVAL", env.get("PUBLISH_INTERVAL") or str(defaults.PUBLISH_INTERVAL)
            ),
            exchange=exchange,
            routing_key=routing_key,
            exchanges=exchanges,
            queues=queues,
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
            on_return=_choice(
                "ON_RETURN", opt("ON_RETURN", defaults.ON_RETURN), defaults.ON_RETURN_CHOICES
            ),
            startup_retries=_positive(
                "STARTUP_RETRIES", opt("STARTUP_RETRIES", defaults.STARTUP_RETRIES), int
            ),
            declare=_choice("DECLARE", opt("DECLARE", defaults.DECLARE), defaults.DECLARE_CHOICES),
            amqp_ssl=amqp_ssl(cfg.get("AMQP_SSL")),
        )
        # Celery's own order: the environment's CELERY_BROKER_URL before the config's
        broker = env.get("CELERY_BROKER_URL") or cfg.get("broker_url")
        if isinstance(broker, str) and broker:
            check_broker(broker)
        recipes = check_schedule(
            cfg.get("beat_schedule") or {},
            loaded.context,
            known_tasks,
            str(cfg.get("task_serializer") or "json"),
        )
        return replace(loaded, recipes=recipes)


def unknown_names(names: Iterable[str], celery_names: Collection[str] = ()) -> list[str]:
    """One warning line for each upper-case name of celeryconfig.py that pubtasks does
    not read (a misspelling, a setting of another version), with the nearest it does;
    names of Celery's (``celery_names``, its old upper-case ones, lower-cased) are not."""
    lines = []
    for name in sorted(n for n in names if n.isupper() and not n.startswith("_")):
        if name in CONFIG_NAMES or name.lower() in celery_names:
            continue
        if name in ENV_NAMES:
            lines.append(
                f"{name} in celeryconfig.py is not read: pubtasks takes it from the "
                f"environment only; set {name} there"
            )
            continue
        near = difflib.get_close_matches(name, sorted(CONFIG_NAMES | ENV_NAMES), n=1)
        hint = f"did you mean {near[0]}?" if near else "it is not a setting of pubtasks"
        lines.append(
            f"{name} in celeryconfig.py is not a setting pubtasks knows, and is ignored: "
            f"{hint} (a name of your own: start it with _)"
        )
    return lines


# -- the topology ------------------------------------------------------------------------


def shorthand(
    exchange: str = defaults.EXCHANGE,
    exchange_type: str = defaults.EXCHANGE_TYPE,
    queue: str = defaults.QUEUE,
    binding_key: str = defaults.ROUTING_KEY,
    queue_type: str = defaults.QUEUE_TYPE,
) -> tuple[tuple[Exchange, ...], tuple[Queue, ...]]:
    """One durable exchange and one durable queue bound to it: the pika example's.

    ``queue_type="quorum"`` makes the queue a quorum queue (``x-queue-type``).
    """
    x = Exchange(exchange, type=exchange_type, durable=True, auto_delete=False)
    arguments = {"x-queue-type": queue_type} if queue_type != defaults.QUEUE_TYPE else None
    q = Queue(queue, exchange=x, routing_key=binding_key, durable=True, queue_arguments=arguments)
    return (x,), (q,)


def exchanges_of(queue: Queue) -> list[Exchange]:
    """The exchanges a queue is bound to: its own, or those of its ``bindings``."""
    found = [queue.exchange] if queue.exchange is not None and queue.exchange.name else []
    return found + [b.exchange for b in queue.bindings if b.exchange and b.exchange.name]


def declared_exchanges(s: Settings) -> set[str]:
    """The names of the exchanges pubtasks declares."""
    names = {x.name for x in s.exchanges}
    for q in s.queues:
        names.update(x.name for x in exchanges_of(q))
    return names


def _exchange_key(x: Exchange) -> tuple[Any, ...]:
    arguments = getattr(x, "arguments", None)  # a kombu attribute set from its ``attrs``
    return (x.type, bool(x.durable), bool(x.auto_delete), bool(x.passive), repr(arguments))


def _check_exchange(where: str, x: Any, seen: dict[str, Exchange]) -> None:
    if not isinstance(x, Exchange):
        raise ConfigError(f"{where} is {kind_of(x)}; give a kombu Exchange")
    if not isinstance(x.name, str) or not x.name:
        raise ConfigError(f"{where} has no name; name it (the default exchange needs no entry)")
    if x.name.startswith("amq."):
        raise ConfigError(f"{where}: {x.name!r} is RabbitMQ's own; it needs no declaring")
    if x.type not in EXCHANGE_TYPES and not str(x.type).startswith("x-"):
        raise ConfigError(
            f"{where}: exchange {x.name!r} has type {x.type!r}; use one of "
            f"{', '.join(sorted(EXCHANGE_TYPES))} (or a plugin's x-... type)"
        )
    other = seen.setdefault(x.name, x)
    if _exchange_key(other) != _exchange_key(x):
        raise ConfigError(
            f"{where}: exchange {x.name!r} is given twice, differently "
            f"({other.type}, durable={other.durable} and {x.type}, durable={x.durable}); "
            "describe it one way"
        )


def _queues(cfg: Mapping[str, Any], exchange: str, routing_key: str) -> tuple[Any, Any]:
    """The shorthand's exchange and queue, or no exchange of its own and ``QUEUES``."""
    given = cfg.get("QUEUES")
    if given is None:
        exchange_type = _given(cfg, "EXCHANGE_TYPE", defaults.EXCHANGE_TYPE)
        if exchange_type not in EXCHANGE_TYPES:
            raise ConfigError(
                f"EXCHANGE_TYPE={exchange_type!r} in celeryconfig.py must be one of "
                + ", ".join(sorted(EXCHANGE_TYPES))
            )
        queue = _name("QUEUE", _given(cfg, "QUEUE", defaults.QUEUE))
        binding_key = _name("BINDING_KEY", _given(cfg, "BINDING_KEY", routing_key))
        queue_type = _choice(
            "QUEUE_TYPE", _given(cfg, "QUEUE_TYPE", defaults.QUEUE_TYPE), defaults.QUEUE_TYPES
        )
        return shorthand(exchange, exchange_type, queue, binding_key, queue_type)
    shortened = [name for name in SHORTHAND if cfg.get(name) is not None]
    if shortened:
        raise ConfigError(
            f"{', '.join(shortened)} in celeryconfig.py are shorthand for a topology "
            "without QUEUES; with QUEUES, describe every queue and exchange there (and "
            "in EXCHANGES) and remove them"
        )
    if not isinstance(given, list | tuple):
        raise ConfigError(
            f"QUEUES in celeryconfig.py is {kind_of(given)}; give a list of kombu Queue objects"
        )
    return (), tuple(given)


def _check_queue(where: str, q: Any, names: set[str], seen: dict[str, Exchange]) -> None:
    if not isinstance(q, Queue):
        raise ConfigError(f"{where} is {kind_of(q)}; give a kombu Queue")
    if not isinstance(q.name, str) or not q.name:
        raise ConfigError(f"{where} has no name; name the queue")
    if q.name in names:
        raise ConfigError(f"{where}: queue {q.name!r} is given twice; give it once")
    names.add(q.name)
    for b in q.bindings:
        if not isinstance(b, binding):
            raise ConfigError(f"{where} ({q.name!r}): its bindings must be kombu bindings")
    for x in exchanges_of(q):
        _check_exchange(f"{where} ({q.name!r})", x, seen)


def topology(
    cfg: Mapping[str, Any], exchange: str, routing_key: str
) -> tuple[tuple[Exchange, ...], tuple[Queue, ...]]:
    """``EXCHANGES`` and ``QUEUES``, checked; without ``QUEUES``, the shorthand's queue."""
    own, queues = _queues(cfg, exchange, routing_key)
    extra = cfg.get("EXCHANGES") or []
    if not isinstance(extra, list | tuple):
        raise ConfigError(
            f"EXCHANGES in celeryconfig.py is {kind_of(extra)}; give a list of kombu "
            "Exchange objects"
        )
    seen: dict[str, Exchange] = {}
    for x in own:
        _check_exchange(f"EXCHANGE={x.name!r}", x, seen)
    for i, x in enumerate(extra):
        _check_exchange(f"EXCHANGES[{i}]", x, seen)
    names: set[str] = set()
    for i, q in enumerate(queues):
        _check_queue(f"QUEUES[{i}]", q, names, seen)
    return (*own, *extra), queues
