"""The embedded beat's heartbeat: one time in memory that the worker shares with beat.

A beat that is killed is seen by its exit (``supervision``). A beat that stays alive
but stops ticking (SIGSTOP, a stuck call) is seen by its silence: the worker makes a
``Pulse`` before Celery forks the embedded beat (bootsteps create every step before
they start any), the beat process inherits it and stamps it at every
``Scheduler.tick`` (and as it sends each tick), and the worker's supervisor reads it
every second. The time is ``CLOCK_MONOTONIC`` (``time.monotonic``), which every
process of a host shares and no clock change moves.

The pulse lives in an anonymous shared mapping, not in Redis, so that a Redis outage
does not look like a hang (beat goes on ticking, and stamping, while its Redis calls
fail), and not in a file, so that nothing is left behind. The mapping has no file
descriptor: it survives Celery's closing of the beat process's descriptors. It has
no lock either (a stopped beat could hold it forever): the stamp is one aligned
8-byte store.

A beat started on its own (``celery -A pubtasks beat``) has no pulse installed, and
``stamp`` does nothing there.
"""

from __future__ import annotations

import ctypes
import mmap
import time
from collections.abc import Callable

from pubtasks import timing

#: Seconds without a stamp after which the embedded beat counts as hung. Longer than the
#: longest legitimate silence: one Redis call of beat's client that fails slowly (a
#: silent network cut: a first attempt bounded by its 5 s socket timeout, then two
#: reconnects bounded by 2 s each, with backoffs of 0.1 and 0.2 s: about 9.3 s; see
#: ``store.connect`` and ``Stats.of(settings, retries=2)`` in ``beat``) plus beat's
#: longest sleep between two ticks (1 s); beat stamps between its calls, so two slow
#: calls in a row do not add up. Short enough that with the supervisor's look every
#: second, a hang is handled within 30 s: seen 20 to 22 s after the last stamp, the
#: beat killed at once, and the worker's warm stop begun.


class Pulse:
    """A monotonic time in an anonymous shared mapping, inherited across ``fork``."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._map = mmap.mmap(-1, ctypes.sizeof(ctypes.c_double))
        self._at = ctypes.c_double.from_buffer(self._map)
        self.stamp()

    def stamp(self) -> None:
        """Say "alive, now" (beat, at each tick; the supervisor, as beat starts)."""
        self._at.value = self._clock()

    def silence(self) -> float:
        """Seconds since the last stamp."""
        return max(self._clock() - self._at.value, 0.0)


#: The pulse of this process's worker (at most one), inherited by its beat.
_installed: list[Pulse] = []


def install(clock: Callable[[], float] = time.monotonic) -> Pulse:
    """Make the pulse that an embedded beat forked after this call inherits (the worker)."""
    _installed[:] = [Pulse(clock)]
    return _installed[0]


def stamp() -> None:
    """Stamp the inherited pulse, if there is one (beat, at each tick)."""
    for p in _installed:
        p.stamp()


def hung(silence: float, after: float = timing.HUNG_AFTER) -> bool:
    """Is a beat silent for ``silence`` seconds hung? Pure: the supervisor's decision."""
    return silence > after
