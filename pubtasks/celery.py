"""The Celery app, its configuration and its settings.

``celery -A pubtasks worker -B`` finds ``app`` here: for a package, Celery looks
in ``<package>.celery``. The configuration is the top-level ``celeryconfig``
module (found on ``sys.path`` or in the current directory), laid over
``celery_defaults()``; without one, the package defaults apply and one log line
says so. pubtasks' own settings (``settings.Settings``) are loaded once per
process from the environment and that configuration, by ``App.settings``, when
the worker, beat or a ``pubtasks`` command starts, and passed down from here.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery import Celery, signals
from celery.app.defaults import NAMESPACES, flatten
from celery.utils.imports import import_from_cwd

from pubtasks import (
    defaults,
    startup,
    stopping,  # noqa: F401  (its hooks connect to worker_process_init, beat_embedded_init)
    timing,
)
from pubtasks.errors import ConfigError
from pubtasks.schedule import every
from pubtasks.settings import Settings, unknown_names, url_of
from pubtasks.supervision import Supervision
from pubtasks.tls import broker_use_ssl
from pubtasks.transport import BrokerAMQP
from pubtasks.urls import REDIS_SCHEMES, check_url, is_sentinel, master_name

log = logging.getLogger("pubtasks")

CONFIG_MODULE = "celeryconfig"

#: Options of the publish task that pubtasks' promise rests on: they are set on the task
#: itself, so Celery's global settings of the same name do not change them.
TASK_OPTIONS = {
    "task_acks_late": "acks_late=True",
    "task_reject_on_worker_lost": "reject_on_worker_lost=True",
    "task_ignore_result": "ignore_result=True",
}


def celery_defaults() -> dict[str, Any]:
    """Celery settings that celeryconfig may override."""
    try:
        redis_url = check_url(
            "REDIS_URL", url_of(os.environ, "REDIS_URL", defaults.REDIS_URL), REDIS_SCHEMES
        )
        name = master_name(os.environ)
        use_ssl = broker_use_ssl(redis_url)
    except ConfigError as exc:  # Celery would parse it first and print a traceback
        startup.exit_with(str(exc))
    transport: dict[str, Any] = {"visibility_timeout": timing.VISIBILITY_TIMEOUT}
    if is_sentinel(redis_url):
        # kombu's Sentinel transport finds the master by this name, through the Sentinels
        # of the URL, and asks again after a failover.
        transport["master_name"] = name
    tls: dict[str, Any] = {} if use_ssl is None else {"broker_use_ssl": use_ssl}
    return {
        # A rediss:// REDIS_URL: Celery's transport takes its TLS from broker_use_ssl.
        **tls,
        # Celery's own transport is Redis, so beat keeps firing while RabbitMQ is down
        # and those ticks are published once it is back. CELERY_BROKER_URL overrides it.
        "broker_url": redis_url,
        "broker_connection_retry_on_startup": True,
        "worker_prefetch_multiplier": 1,
        # Redis redelivers an unacknowledged task after this many seconds; it must stay
        # longer than a tick can take (TICK_DEADLINE) or a slow tick runs twice.
        "broker_transport_options": transport,
        "beat_scheduler": "pubtasks.beat:Scheduler",
        # The pika example's one publish, every PUBLISH_INTERVAL, until celeryconfig says.
        "beat_schedule": {
            defaults.DEFAULT_ENTRY: {"task": defaults.TASK_NAME, "schedule": every()}
        },
        "timezone": "UTC",
        "enable_utc": True,
        "worker_redirect_stdouts": False,
    }


class App(Celery):  # type: ignore[misc]
    """The Celery app, carrying pubtasks' settings. Its broker connections use pubtasks'
    Redis transports (``transport.py``: a Redis failover must not stop the worker)."""

    amqp_cls = BrokerAMQP
    _settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        """This process's settings: read from the environment and the configuration on
        first use (at worker, beat or command start), then kept. Raises ``ConfigError``."""
        if self._settings is None:
            self._settings = Settings.load(os.environ, self.conf, known_tasks=list(self.tasks))
        return self._settings

    def use_settings(self, settings: Settings | None) -> None:
        """Replace this process's settings (the tests); None loads them again on next use."""
        self._settings = settings


app = App("pubtasks", include=["pubtasks.tasks"])
app.steps["worker"].add(Supervision)


def celery_old_names() -> set[str]:
    """Celery's own upper-case setting names (its old style), lower-cased."""
    return {old for _, option in flatten(NAMESPACES) for old in (option.old or ())}


@app.on_configure.connect  # type: ignore[untyped-decorator]
def _load_celeryconfig(sender: Celery, **_: Any) -> None:
    """Configure ``sender`` from celeryconfig laid over ``celery_defaults()``.

    One mapping, so that celeryconfig wins: defaults given to Celery's
    ``add_defaults`` would rank above it, and celeryconfig's own value of, say,
    ``broker_transport_options`` or ``worker_prefetch_multiplier`` would be ignored.
    celeryconfig's ``broker_transport_options`` is laid over ours key by key, so that
    giving one option keeps the Sentinel ``master_name`` and the ``visibility_timeout``.
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
        given = {k: v for k, v in vars(module).items() if not k.startswith("_")}
        for line in unknown_names(given, celery_old_names()):
            log.warning("pubtasks: %s", line)
        for name in TASK_OPTIONS.keys() & given.keys():
            log.warning(
                "pubtasks: %s in %s does not apply to pubtasks.publish and "
                "pubtasks.publish_group, which keep %s",
                name,
                CONFIG_MODULE,
                TASK_OPTIONS[name],
            )
        options = given.get("broker_transport_options")
        if isinstance(options, dict):  # laid over ours: master_name stays unless given
            given["broker_transport_options"] = {**settings["broker_transport_options"], **options}
        settings.update(given)
    sender.config_from_object(settings)


@signals.worker_init.connect  # type: ignore[untyped-decorator]
def _check_on_worker_start(**_: Any) -> None:
    startup.check_or_exit(startup.settings_or_exit(lambda: app.settings), app.conf)


@signals.beat_init.connect  # type: ignore[untyped-decorator]
def _check_on_beat_start(**_: Any) -> None:
    startup.settings_or_exit(lambda: app.settings)
