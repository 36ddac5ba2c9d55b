"""Payload functions to start from: ``"payload": "pubtasks.payloads:load_average"``.

A payload function is called at publish time with the tick, as keyword arguments
``entry``, ``scheduled_at``, ``message_number`` and ``message_id``, and returns the
body: an object (serialised with the entry's ``serializer``, JSON by default), a
``str`` (text/plain) or ``bytes``. Write your own the same way, in any module the
worker can import (one beside ``celeryconfig.py`` will do).
"""

from __future__ import annotations

import os
import socket
from typing import Any


def load_average(*, scheduled_at: float, **_: Any) -> dict[str, Any]:
    """This machine's load average over 1, 5 and 15 minutes, as of the tick."""
    one, five, fifteen = os.getloadavg()
    return {
        "host": socket.gethostname(),
        "at": scheduled_at,
        "load": {"1m": one, "5m": five, "15m": fifteen},
    }
