"""How faithfully ticks followed their schedule: pure arithmetic on their scheduled times."""

from __future__ import annotations

import math
from typing import Any


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def grid_fidelity(
    scheduled: list[float], interval: float, spawned: float, stopped: float
) -> dict[str, Any]:
    """Expected against delivered ticks, and drift from t0 + k * interval.

    Expected: one tick per grid point from the first tick to ``stopped``. Extra at
    startup: ticks for grid points before the worker was started (a catch-up burst),
    and any grid point fired twice.
    """
    times = sorted(scheduled)
    if not times:
        return {"expected": 0, "delivered": 0, "missed": 0, "extra_at_startup": 0}
    t0 = times[0]
    ks = [round((t - t0) / interval) for t in times]
    drift = [abs(t - (t0 + k * interval)) for t, k in zip(times, ks, strict=True)]
    expected = math.floor((stopped - t0) / interval + 1e-9) + 1
    return {
        "expected": expected,
        "delivered": len(times),
        "missed": expected - len(set(ks)),
        "max_drift_ms": round(max(drift) * 1000, 3),
        "extra_at_startup": sum(1 for t in times if t < spawned) + len(ks) - len(set(ks)),
    }


def timedelta_drift(scheduled: list[float], interval: float) -> dict[str, Any]:
    """How far Celery's timedelta ticks fall behind t0 + k * interval, per tick."""
    times = sorted(scheduled)
    if len(times) < 2:
        return {}
    behind = [t - (times[0] + k * interval) for k, t in enumerate(times)]
    return {
        "ticks": len(times),
        "drift_ms_total": round(behind[-1] * 1000, 3),
        "drift_ms_per_tick": round(behind[-1] * 1000 / (len(times) - 1), 4),
    }
