"""The Celery app: configuration, and the checks that run when a worker starts.

``celery -A pubtasks worker -B`` finds ``pubtasks.app``. Its configuration is
the top-level ``celeryconfig`` module (found on ``sys.path`` or in the current
directory); without one, the package defaults below apply and one log line
says so. Environment variables are read when the configuration is first
needed (at start), never at import.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.utils.imports import import_from_cwd

from pubtasks import defaults
from pubtasks.errors import ConfigError

log = logging.getLogger("pubtasks")

CONFIG_MODULE = "celeryconfig"


def celery_defaults() -> dict[str, Any]:
    """Celery settings that celeryconfig may override."""
    from pubtasks.settings import REDIS_SCHEMES, check_url

    try:
        redis_url = check_url(
            "REDIS_URL", os.environ.get("REDIS_URL") or defaults.REDIS_URL, REDIS_SCHEMES
        )
    except ConfigError as exc:  # Celery would parse it first and print a traceback
        from pubtasks.startup import exit_with

        exit_with(str(exc))
    return {
        # Celery's own transport is Redis, so beat keeps firing while RabbitMQ is down
        # and those ticks are published once it is back. CELERY_BROKER_URL overrides it.
        "broker_url": redis_url,
        "broker_connection_retry_on_startup": True,
        # Acknowledge a tick only after it was published and confirmed, and hand it back
        # to the queue when the worker process dies mid-publish (SIGKILL, OOM).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Redis redelivers an unacknowledged task after this many seconds; it must stay
        # longer than a tick can take (TICK_DEADLINE) or a slow tick runs twice.
        "broker_transport_options": {"visibility_timeout": 3600},
        "task_ignore_result": True,
        "beat_scheduler": "pubtasks.beat:Scheduler",
        "timezone": "UTC",
        "enable_utc": True,
        "worker_redirect_stdouts": False,
    }


app = Celery("pubtasks", include=["pubtasks.tasks"])


@app.on_configure.connect  # type: ignore[untyped-decorator]
def _load_celeryconfig(sender: Celery, **_: Any) -> None:
    """Configure ``sender`` from celeryconfig laid over ``celery_defaults()``.

    One mapping, so that celeryconfig wins: defaults given to Celery's
    ``add_defaults`` would rank above it, and celeryconfig's own value of, say,
    ``broker_transport_options`` or ``worker_prefetch_multiplier`` would be ignored.
    """
    settings = celery_defaults()
    try:
        module = import_from_cwd(CONFIG_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != CONFIG_MODULE:
            raise
        log.warning(
            "pubtasks: no %s module in %s or on sys.path; running on package defaults",
            CONFIG_MODULE,
            os.getcwd(),
        )
    else:
        settings.update((k, v) for k, v in vars(module).items() if not k.startswith("_"))
    sender.config_from_object(settings)


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _check_on_worker_start(**_: Any) -> None:
    from pubtasks import startup

    startup.check_or_exit(app)


@signals.beat_init.connect  # type: ignore[untyped-decorator]
def _check_on_beat_start(**_: Any) -> None:
    from pubtasks import startup

    startup.settings_or_exit(app)


@signals.worker_process_shutdown.connect  # type: ignore[untyped-decorator]
def _close_on_process_shutdown(**_: Any) -> None:
    from pubtasks import tasks

    tasks.close_publisher()
