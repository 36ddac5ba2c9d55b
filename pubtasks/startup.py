"""Checks at worker and beat start: fail fast, in one line, on what retrying cannot fix."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, NoReturn

from pubtasks import settings
from pubtasks.errors import BrokerError, ConfigError, PubtasksError, StatsUnavailable
from pubtasks.publisher import RECONNECT, Publisher
from pubtasks.settings import Settings
from pubtasks.stats import Stats

log = logging.getLogger("pubtasks")


def exit_with(line: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and leave: no traceback, no password (callers mask URLs)."""
    print(f"pubtasks: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def settings_or_exit(app: Any) -> Settings:
    """Load and check the settings once for this process, or exit naming the bad setting."""
    try:
        loaded = Settings.load(os.environ, app.conf)
    except ConfigError as exc:
        exit_with(str(exc))
    settings.install(loaded)
    return loaded


def wait_for_redis(stats: Stats, s: Settings) -> None:
    """Ping Redis until it answers, one log line per failed attempt, at most STARTUP_RETRIES."""
    interval = RECONNECT["interval_start"]
    for attempt in range(1, s.startup_retries + 1):
        try:
            stats.ping()
            return
        except StatsUnavailable as exc:
            if attempt == s.startup_retries:
                raise
            interval = min(interval + RECONNECT["interval_step"], RECONNECT["interval_max"] * 2)
            log.warning(
                "pubtasks: %s; retrying in %.2f s (attempt %d/%d)",
                exc,
                interval,
                attempt,
                s.startup_retries,
            )
            time.sleep(interval)


def check_or_exit(app: Any) -> None:
    """At worker start: settings, Redis, RabbitMQ and the topology, or exit non-zero."""
    s = settings_or_exit(app)
    log.info("pubtasks: %s", s)
    stats = Stats.from_url(s.redis_url, s.stats_prefix)
    publisher = Publisher(s, stats)
    attempts = {"n": 0}

    def on_retry(reason: str, interval: float) -> None:
        attempts["n"] += 1
        log.warning(
            "pubtasks: RabbitMQ at %s: %s; retrying in %.2f s (attempt %d/%d)",
            s.amqp_url_masked,
            reason,
            interval,
            attempts["n"],
            s.startup_retries,
        )

    try:
        wait_for_redis(stats, s)
        publisher.connect(max_retries=s.startup_retries, on_retry=on_retry)
    except BrokerError as exc:
        exit_with(str(exc))
    except PubtasksError as exc:  # TopologyError: the declaration conflicts
        exit_with(f"{exc}; fix celeryconfig.py or the entity in RabbitMQ")
    except Exception as exc:  # at start, anything else is one line too
        exit_with(f"cannot start: {type(exc).__name__}: {exc}")
    finally:
        publisher.close()
        stats.client.close()
    log.info(
        "pubtasks: exchange %r, queue %r and their binding are declared on %s",
        s.exchange,
        s.queue,
        s.amqp_url_masked,
    )
