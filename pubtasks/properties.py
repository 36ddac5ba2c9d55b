"""AMQP basic properties as kombu's ``Producer.publish`` takes them, and without what
kombu adds to every message without meaning anything by it: pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: The properties kombu's ``Producer.publish`` takes under names of its own.
KOMBU_NAMES = {"application_headers": "headers"}


def kombu_expiration(milliseconds: str) -> float:
    """A message TTL in milliseconds, as kombu's ``Producer.publish`` takes it.

    kombu takes seconds and sends ``str(int(seconds * 1000))``; ``m / 1000`` can come
    back as ``m - 1`` (1001 / 1000 * 1000 is 1000.9999999999999), so half a
    millisecond more is given, which the truncation removes: exact below 2**40 ms.
    """
    return (int(milliseconds) + 0.5) / 1000


def publish_arguments(properties: Mapping[str, Any]) -> dict[str, Any]:
    """AMQP basic properties (``message.properties``) as ``Producer.publish`` keywords."""
    arguments = {KOMBU_NAMES.get(k, k): v for k, v in properties.items()}
    expiration = arguments.get("expiration")
    if expiration is not None:
        arguments["expiration"] = kombu_expiration(expiration)
    return arguments


def drop_fillers(properties: dict[str, Any]) -> None:
    """Remove what kombu adds to every message without meaning anything by it.

    kombu sends an empty headers table and priority 0 (the lowest, as if unset), and
    marks a bytes body whose caller named no encoding as ``content_encoding="binary"``.
    Leaving them out says the same and keeps the properties within
    ``message.PROPERTIES_BUDGET``.
    """
    for name in ("application_headers", "priority"):
        if not properties.get(name):
            properties.pop(name, None)
    if properties.get("content_encoding") == "binary":
        del properties["content_encoding"]
