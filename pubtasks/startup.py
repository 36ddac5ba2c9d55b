"""Checks at worker and beat start: fail fast, in one line, on what retrying cannot fix.

Each service gets ``STARTUP_RETRIES`` connection attempts in all. Each failed
attempt but the last logs one line; after the last, the process exits with one
error line on stderr and a non-zero code. No traceback, no password.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

from pubtasks import acl, timing, tls
from pubtasks.errors import (
    BrokerError,
    ConfigError,
    PubtasksError,
    StatsUnavailable,
    TlsRefused,
)
from pubtasks.settings import Settings
from pubtasks.stats import Stats
from pubtasks.stream import ConfirmStream, Options
from pubtasks.topology import Topology

log = logging.getLogger("pubtasks")


def exit_with(line: str, code: int = 2) -> NoReturn:
    """Print one line to stderr and leave: no traceback, no password (callers mask URLs)."""
    print(f"pubtasks: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def settings_or_exit(load: Callable[[], Settings]) -> Settings:
    """Load and check this process's settings, or exit naming the bad setting."""
    try:
        return load()
    except ConfigError as exc:
        exit_with(str(exc))


def retry_line(service: str, reason: str, interval: float, attempt: int, attempts: int) -> None:
    log.warning(
        "pubtasks: %s: %s; retrying in %.2f s (attempt %d/%d)",
        service,
        reason,
        interval,
        attempt,
        attempts,
    )


def wait_for_redis(stats: Stats, attempts: int) -> None:
    """Ping Redis until it answers, at most ``attempts`` times, one line per failed attempt."""
    for attempt in range(1, attempts + 1):
        try:
            stats.ping()
            return
        except StatsUnavailable as exc:
            failed = tls.tls_failure(exc)
            if failed is not None:  # a retry would meet the same certificate
                raise TlsRefused(
                    f"Redis at {stats.where}: TLS failed: {type(failed).__name__}: {failed}; "
                    "check the ssl_ca_certs, ssl_certfile, ssl_keyfile and ssl_cert_reqs of "
                    "REDIS_URL, and its port"
                ) from exc
            if attempt == attempts:
                raise
            interval = timing.RECONNECT.delay(attempt + 1)
            retry_line("Redis", str(exc), interval, attempt, attempts)
            time.sleep(interval)


def check_access(stats: Stats, s: Settings, conf: Mapping[str, Any]) -> None:
    """Exit with one line if the Redis user may not run a command, or use a key, that
    pubtasks or Celery's transport needs (a Redis ACL user: ``pubtasks redis-acl``)."""
    keys = acl.probe_keys(s.stats_prefix, conf)
    refused = stats.refusal(acl.PROBE, keys, s.wait_replicas > 0)
    if refused is not None:
        exit_with(
            f"Redis at {s.redis_url_masked} refuses what pubtasks needs: {refused}; give the "
            "user the rules that `pubtasks redis-acl` prints"
        )


def check_or_exit(s: Settings, conf: Mapping[str, Any] | None = None) -> None:
    """At worker start: Redis (and its ACL, given Celery's ``conf``), RabbitMQ and the
    topology, or exit non-zero."""
    log.info("pubtasks: %s", s)
    if tls.unverified(s.amqp_ssl):
        log.warning(
            "pubtasks: AMQP_SSL has cert_reqs 'none': RabbitMQ's certificate is not verified, "
            "so whoever is on the path can read and change what pubtasks publishes"
        )
    # One connection attempt per ping: the attempts are counted here, not inside redis-py.
    stats = Stats.of(s, retries=0)
    stream = ConfirmStream(Options.from_settings(s), Topology.from_settings(s))
    failed = 0

    def on_retry(reason: str, interval: float) -> None:
        nonlocal failed
        failed += 1
        retry_line(f"RabbitMQ at {s.amqp_url_masked}", reason, interval, failed, s.startup_retries)

    try:
        wait_for_redis(stats, s.startup_retries)
        if conf is not None:
            check_access(stats, s, conf)
        # kombu's max_retries counts the attempts after the first.
        stream.ensure(max_retries=s.startup_retries - 1, on_retry=on_retry)
    except BrokerError as exc:
        exit_with(str(exc))
    except PubtasksError as exc:  # TopologyError: the declaration conflicts
        exit_with(f"{exc}; fix celeryconfig.py or the entity in RabbitMQ")
    except Exception as exc:  # at start, anything else is one line too
        exit_with(f"cannot start: {type(exc).__name__}: {exc}")
    finally:
        stream.close()
        stats.close()
    made = {"all": "declarations made", "passive": "entities found (DECLARE='passive')"}
    log.info(
        "pubtasks: %d %s on %s (%s)",
        len(stream.topology.declarations()),
        made.get(s.declare, "declarations: none (DECLARE='none')"),
        s.amqp_url_masked,
        "; ".join(d.what for d in stream.topology.declarations()),
    )
