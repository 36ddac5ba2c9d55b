"""TLS settings: ``AMQP_SSL`` checked, each error naming the key (pure, but for
checking that the files it names can be read).

``AMQP_SSL`` in celeryconfig.py is the dict kombu's ``Connection(ssl=...)`` takes
for py-amqp, with the keys ``ca_certs``, ``certfile``, ``keyfile``, ``cert_reqs``
and ``server_hostname``. Verification stays on unless ``cert_reqs`` says
``"none"`` (or ``ssl.CERT_NONE``); the host name is checked against the host of
the URL in use (kombu fills in ``server_hostname: None``) unless it names one.
"""

from __future__ import annotations

import difflib
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from pubtasks.errors import ConfigError

KEYS = ("ca_certs", "certfile", "keyfile", "cert_reqs", "server_hostname")
FILES = ("ca_certs", "certfile", "keyfile")
#: Names other libraries give them (ssl's load_verify_locations, RabbitMQ's config).
ALIASES = {"cafile": "ca_certs", "cacertfile": "ca_certs", "ssl_ca_certs": "ca_certs",
           "ssl_certfile": "certfile", "ssl_keyfile": "keyfile", "verify": "cert_reqs"}  # fmt: skip
CERT_REQS = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}


def amqp_ssl(value: Any) -> dict[str, Any] | None:
    """AMQP_SSL checked and completed, or None when it is not set."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"AMQP_SSL in celeryconfig.py is a {type(value).__name__}; give a dict, e.g. "
            "{'ca_certs': '/etc/ssl/my-ca.pem'}"
        )
    for key in value:
        if key not in KEYS:
            near = (
                [ALIASES[key]] if key in ALIASES else difflib.get_close_matches(str(key), KEYS, 1)
            )
            hint = f"did you mean {near[0]!r}?" if near else "give " + ", ".join(KEYS)
            raise ConfigError(f"AMQP_SSL[{key!r}] is not a key it takes; {hint}")
    options: dict[str, Any] = {"server_hostname": None, **_files(value)}
    if "keyfile" in options and "certfile" not in options:
        raise ConfigError("AMQP_SSL has a 'keyfile' without its 'certfile'; give both")
    options["cert_reqs"] = _cert_reqs(value.get("cert_reqs", ssl.CERT_REQUIRED))
    if options["cert_reqs"] == ssl.CERT_NONE:  # nothing verified: no host name to check
        del options["server_hostname"]
        return options
    hostname = value.get("server_hostname")
    if hostname is not None:
        if not isinstance(hostname, str) or not hostname:
            raise ConfigError(f"AMQP_SSL['server_hostname']={hostname!r} must be a host name")
        options["server_hostname"] = hostname
    return options


def _files(value: Mapping[str, Any]) -> dict[str, str]:
    found = {}
    for key in FILES:
        path = value.get(key)
        if path is None:
            continue
        try:
            Path(path).read_bytes()
        except (OSError, TypeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a path"
            raise ConfigError(
                f"AMQP_SSL[{key!r}]={path!r} cannot be read ({reason}); give the path of a PEM file"
            ) from None
        found[key] = str(path)
    return found


def _cert_reqs(reqs: Any) -> ssl.VerifyMode:
    if isinstance(reqs, str) and reqs.lower() in CERT_REQS:
        reqs = CERT_REQS[reqs.lower()]
    if reqs not in CERT_REQS.values():
        raise ConfigError(
            f"AMQP_SSL['cert_reqs']={reqs!r} must be 'required' (the default), 'optional' or "
            "'none' (or ssl.CERT_REQUIRED...)"
        )
    return ssl.VerifyMode(reqs)


def as_setting(options: Mapping[str, Any]) -> dict[str, Any]:
    """Checked options written back as AMQP_SSL (for a celeryconfig.py of the bench's)."""
    names = {mode: name for name, mode in CERT_REQS.items()}
    written = {k: v for k, v in options.items() if v is not None}
    written["cert_reqs"] = names[options.get("cert_reqs", ssl.CERT_REQUIRED)]
    return written


def unverified(options: Mapping[str, Any] | None) -> bool:
    """Whether these options turn verification of the server's certificate off."""
    return options is not None and options.get("cert_reqs") == ssl.CERT_NONE


#: The TLS parameters of a rediss:// URL that redis-py reads, and Celery's
#: ``broker_use_ssl`` takes under the same names.
REDIS_TLS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs")


def broker_use_ssl(redis_url: str) -> dict[str, Any] | None:
    """Celery's ``broker_use_ssl`` for a rediss:// REDIS_URL: its ``ssl_*`` parameters,
    verification on unless ``ssl_cert_reqs`` says otherwise; None for plain Redis."""
    last = redis_url.rsplit(";", maxsplit=1)[-1]
    if urlsplit(last).scheme != "rediss":
        return None
    given = {k: v for k, v in parse_qsl(urlsplit(last).query) if k in REDIS_TLS}
    reqs = given.pop("ssl_cert_reqs", "required")
    if reqs.lower() not in CERT_REQS:
        raise ConfigError(
            f"REDIS_URL's ssl_cert_reqs={reqs!r} must be 'required' (the default), 'optional' "
            "or 'none'"
        )
    return {**given, "ssl_cert_reqs": CERT_REQS[reqs.lower()]}


def tls_failure(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (its causes and contexts), if one is: a retry would
    meet the same certificate."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
