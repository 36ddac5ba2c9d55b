"""How pubtasks writes a moment: UTC, ISO 8601 to the millisecond, and how long ago."""

from __future__ import annotations

from datetime import UTC, datetime


def stamp(at: float) -> str:
    """``at`` (seconds since the epoch) as ``2026-12-02T13:00:00.123Z``."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def moment(at: float | None, now: float) -> str:
    """``at`` stamped, with how long before ``now`` it was (or after: "in ..."); "-" for
    none."""
    if at is None:
        return "-"
    ago = now - at
    return f"{stamp(at)} ({ago:.1f} s ago)" if ago >= 0 else f"{stamp(at)} (in {-ago:.1f} s)"
