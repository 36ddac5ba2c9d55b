"""Serving ``/metrics``: prometheus-client's own server, with its TLS; and HTTP basic
auth, which prometheus-client's server does not offer, as a small WSGI layer over
its ``make_wsgi_app`` on the standard library's server, with the same TLS.

The credentials come from a file of one ``user:password`` line (``--basic-auth-file``),
never from the command line, where ``ps`` would show them.
"""

from __future__ import annotations

import base64
import hmac
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import make_wsgi_app, start_http_server
from prometheus_client.registry import CollectorRegistry

from pubtasks.errors import ConfigError


@dataclass(frozen=True)
class Tls:
    """A certificate and its key; with ``client_ca``, clients must show one it signed."""

    cert: str
    key: str
    client_ca: str | None = None

    def context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


def credentials(path: str) -> tuple[str, str]:
    """``user:password`` from the file at ``path``, or ``ConfigError`` naming the option."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise ConfigError(
            f"metrics: --basic-auth-file {path!r} cannot be read ({reason})"
        ) from None
    user, sep, password = text.partition(":")
    if not sep or not user or not password or "\n" in text:
        raise ConfigError(f"metrics: --basic-auth-file {path!r} must hold one line, user:password")
    return user, password


def basic_auth(app: Callable[..., Iterable[bytes]], user: str, password: str) -> Any:
    """``app``, answering 401 to a request without these credentials."""
    expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = str(environ.get("HTTP_AUTHORIZATION", ""))
        if hmac.compare_digest(given.encode(), expected.encode()):
            return app(environ, start_response)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="pubtasks"'), ("Content-Type", "text/plain")],
        )
        return [b"401 Unauthorized: give the user and password of --basic-auth-file\n"]

    return guarded


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per scrape."""


def serve(
    registry: CollectorRegistry,
    address: str,
    port: int,
    tls: Tls | None = None,
    auth: tuple[str, str] | None = None,
) -> None:
    """Serve ``registry`` on ``address:port`` in a thread, with ``tls`` and ``auth``."""
    if auth is None:  # prometheus-client's own server and TLS
        extra: dict[str, Any] = {}
        if tls is not None:
            extra = {"certfile": tls.cert, "keyfile": tls.key}
            if tls.client_ca is not None:
                extra.update(client_cafile=tls.client_ca, client_auth_required=True)
        start_http_server(port, addr=address, registry=registry, **extra)
        return
    app = basic_auth(make_wsgi_app(registry), *auth)
    server = make_server(address, port, app, server_class=_Server, handler_class=_Quiet)
    if tls is not None:
        server.socket = tls.context().wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True, name="metrics").start()
