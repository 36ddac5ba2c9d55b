"""The RabbitMQ the bench measures: its URL and its TLS (``Settings.amqp_tls``), as
kombu and pika connect to it."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import pika
from kombu.connection import Connection

from pubtasks.settings import Settings


@dataclass(frozen=True)
class Broker:
    url: str
    tls: Any = False  # kombu's Connection(ssl=...): False, or AMQP_SSL checked

    @classmethod
    def of(cls, settings: Settings) -> Broker:
        return cls(settings.amqp_url, settings.amqp_tls)

    def connection(self, **kwargs: Any) -> Connection:
        """A kombu connection (not yet connected); each gets its own copy of the TLS
        options, which kombu writes the host name in."""
        tls = dict(self.tls) if isinstance(self.tls, dict) else self.tls
        return Connection(self.url, ssl=tls, **kwargs)

    def pika_parameters(self) -> pika.ConnectionParameters:
        """The same RabbitMQ, user, vhost and TLS for pika."""
        info = self.connection()  # parse the URL as kombu does: "//" is the vhost "/"
        host = info.hostname or "localhost"
        options = None
        if self.tls:
            given = self.tls if isinstance(self.tls, dict) else {}
            context = ssl.create_default_context(cafile=given.get("ca_certs"))
            if given.get("certfile"):
                context.load_cert_chain(given["certfile"], given.get("keyfile"))
            if given.get("cert_reqs", ssl.CERT_REQUIRED) == ssl.CERT_NONE:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            options = pika.SSLOptions(context, given.get("server_hostname") or host)
        return pika.ConnectionParameters(
            host=host,
            port=info.port or (5671 if self.tls else 5672),
            virtual_host=info.virtual_host or "/",
            credentials=pika.PlainCredentials(info.userid or "guest", info.password or "guest"),
            ssl_options=options,
        )
