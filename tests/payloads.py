"""Payload functions the tests name in their schedule entries (``tests.payloads:...``)."""

from __future__ import annotations

import time
from typing import Any

NOT_CALLABLE = 42


def snapshot(
    *, entry: str, scheduled_at: float, message_number: int, message_id: str
) -> dict[str, Any]:
    """Echoes the tick, so a test can check what the payload was called with."""
    return {
        "entry": entry,
        "scheduled_at": scheduled_at,
        "message_number": message_number,
        "message_id": message_id,
        "kind": "snapshot",
    }


def broken(**_: Any) -> None:
    raise RuntimeError("the snapshot source is down")


def unencodable(**_: Any) -> set[int]:
    return {1, 2, 3}


def slow(*, message_number: int, **_: Any) -> dict[str, Any]:
    """Takes 3 s: a sick entry's payload (``tests/test_isolation.py``)."""
    time.sleep(3.0)
    return {"slow": message_number}
