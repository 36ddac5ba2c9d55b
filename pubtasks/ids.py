"""The ids pubtasks writes, built and parsed here only: pure, no I/O.

- A tick's id is ``<entry>@<ms>``, its scheduled time in milliseconds; a tick fired
  by hand is ``<entry>@manual-<ms>``, the time of the request. Message i of a tick
  of a batch is ``<tick id>.<i>``; without a batch the message id is the tick id.
  Every retry, redelivery, and second beat firing the same tick publishes the same
  ids, so a consumer can drop duplicates.
- A pending publish in Redis is ``<message id>#<publisher>.<n>``.
- A process that owns something in Redis (a publisher, the beat lock, a worker's
  heartbeat) is ``<host>.<pid>.<6 hex>``.

The Lua scripts of ``lua`` parse the same formats (the ``_ENTRY_OF`` fragment).
"""

from __future__ import annotations

import os
import socket
import uuid

#: Marks the id of a tick fired by hand (``pubtasks schedule trigger``).
MANUAL = "manual-"


def message_id(entry: str, scheduled_at: float, manual: bool = False) -> str:
    """The stable id of a tick: the entry's name and its scheduled time in milliseconds
    (``<entry>@<ms>``); a tick fired by hand is ``<entry>@manual-<ms>``, its time that of
    the request, so that it never shares an id with a tick of the schedule."""
    return f"{entry}@{MANUAL if manual else ''}{round(scheduled_at * 1000)}"


def message_ids(tick_id: str, batch: int) -> list[str]:
    """The ids of a tick's messages: the tick's id, or with a batch ``<tick id>.<i>``."""
    return [tick_id] if batch == 1 else [f"{tick_id}.{i}" for i in range(batch)]


def tick_of(mid: str) -> tuple[str, str]:
    """(entry, the tick's id) of a message id ``<entry>@[manual-]<ms>[.<i>]``."""
    entry, _, stamp = mid.rpartition("@")
    return entry, f"{entry}@{stamp.split('.', 1)[0]}"


def scheduled_at_of(mid: str) -> float:
    """The scheduled time back from a message id (``<entry>@[manual-]<ms>[.<i>]``)."""
    stamp = mid.rsplit("@", 1)[1].split(".", maxsplit=1)[0]
    return int(stamp.removeprefix(MANUAL)) / 1000


def is_manual(mid: str) -> bool:
    """Whether a message id is that of a tick fired by hand."""
    return mid.rpartition("@")[2].startswith(MANUAL)


def entry_of(pending_key: str) -> str:
    """The entry of a pending publish ``<entry>@<ms>[.<i>]#<publisher>.<n>``."""
    return pending_key.rpartition("#")[0].rpartition("@")[0] or "?"


def owner_id() -> str:
    """Names one process in Redis: host, pid and a random part (a pid is reused)."""
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
