"""A stop signal sent to the whole process group, kept out of the pool and beat.

``kill -TERM -PGID``, systemd's default ``KillMode=control-group`` and a terminal's
Ctrl-C signal every process of the worker at once: its main process, the pool's
processes and the embedded beat. Celery (5.7) and billiard (4.3) let a pool process
die of SIGTERM wherever it is (billiard's ``reset_signals`` makes it ``SystemExit``):
a tick cut mid-publish, its confirm dropped as the channel closes, a
``WorkerLostError``, and the tick published again. They already keep the terminal's
SIGINT away from the pool (billiard ignores it there) and leave it to the main
process, whose warm shutdown lets the running tasks finish, then stops the pool's
processes itself. Here SIGTERM goes the same way, and beat is kept out of both:

- In each child (``worker_process_init`` in a pool process, ``beat_embedded_init`` in
  beat: Celery's public signals, sent in the child's main thread before billiard's
  ``reset_signals``, which sets handlers but leaves the signal mask alone) SIGTERM
  is blocked, and one thread takes it with ``sigtimedwait``, which names the sender.
- A SIGTERM from the worker's main process is obeyed: that is billiard stopping the
  pool (a cold shutdown, ``revoke --terminate``), or Celery stopping beat. A pool
  process gets it as if it had not been blocked (``HANDOFF``: the cold shutdown
  still ends the running tasks, as Celery documents); beat finishes the tick it is
  sending and stops (``Service.stop``), and a second one stops it at once.
- A SIGTERM from anybody else is logged and left to the main process, which got it
  too (or can be sent one: a child is never the way to stop a worker). A child whose
  main process is gone stops as if asked (``PARENT_LOOK``), and obeys any SIGTERM.
- Beat ignores SIGINT, as the pool's processes do.

Where ``sigtimedwait`` is missing (macOS), nothing changes.

The order it relies on (billiard 4.3): ``worker_process_init`` runs before
billiard's ``reset_signals``, which replaces signal handlers but not the signal
mask, so SIGTERM blocked there stays blocked.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from billiard import current_process  # type: ignore[import-untyped]
from celery import signals

log = logging.getLogger(__name__)

#: The signal by which a child's SIGTERM thread hands a SIGTERM from the worker's main
#: process to the child's main thread, where SIGTERM itself stays blocked. Its handler
#: unblocks SIGTERM and raises it, so the child then acts as if SIGTERM had arrived
#: (beat holds it too while it numbers and sends a tick: ``STOPPING``).
HANDOFF = signal.SIGUSR2
#: Seconds between two looks, by a child's SIGTERM thread, at whether the worker's main
#: process is still there. A SIGTERM that arrives while another is pending is merged
#: into it by the kernel, so the main process's own (stopping beat) can be lost in the
#: group's; a child whose main process has gone then stops as if asked.
PARENT_LOOK = 0.5


def _obey_sigterm(signum: int, frame: object) -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    signal.raise_signal(signal.SIGTERM)


def hand_over() -> None:
    """Have this process's main thread act on SIGTERM now, as if it had not been blocked."""
    signal.pthread_kill(threading.main_thread().ident or 0, HANDOFF)


def from_main(sender: int, main: int, me: int, parent_now: int) -> bool:
    """Whether a child of the worker's main process ``main`` obeys a SIGTERM from
    ``sender``: the main process's own (or its own), or any once its main is gone."""
    return sender in (main, me) or parent_now != main


def hold_foreign_sigterm(what: str, obey: Callable[[], None]) -> bool:
    """In a child of the worker's main process, from now on: a SIGTERM that the main
    process sent calls ``obey`` (in a thread of its own), and one from anybody else is
    logged and left to the main process. Call from the child's main thread. False where
    the sender cannot be known (no ``sigtimedwait``): SIGTERM is then left as it was."""
    if not hasattr(signal, "sigtimedwait"):
        return False
    parent = os.getppid()
    signal.signal(HANDOFF, _obey_sigterm)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    thread = threading.Thread(
        target=_take_sigterm, args=(what, parent, obey), name="pubtasks-sigterm", daemon=True
    )
    thread.start()  # it inherits the mask: SIGTERM reaches this process only through it
    return True


def _take_sigterm(what: str, parent: int, obey: Callable[[], None]) -> None:
    orphaned = False
    while True:
        got = signal.sigtimedwait({signal.SIGTERM}, PARENT_LOOK)
        if got is None:
            if not orphaned and os.getppid() != parent:  # its stop was merged, say
                orphaned = True
                log.info(
                    "pubtasks: %s (pid %d): the worker's main process (pid %d) is gone; stopping",
                    what,
                    os.getpid(),
                    parent,
                )
                obey()
            continue
        sender = got.si_pid
        if from_main(sender, parent, os.getpid(), os.getppid()):
            obey()
            continue
        log.info(
            "pubtasks: %s (pid %d): SIGTERM from pid %d is left to the worker's main process "
            "(pid %d), whose warm shutdown stops this process once its work is done",
            what,
            os.getpid(),
            sender,
            parent,
        )


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _pool_process_holds_foreign_sigterm(**_: Any) -> None:
    # The solo pool sends worker_process_init in the worker's main process (and so does
    # Celery's in-process test worker, in pytest's): that process must go on taking
    # SIGTERM itself, and the processes it starts must not inherit SIGTERM blocked.
    if current_process().name == "MainProcess":
        return
    hold_foreign_sigterm("pool process", hand_over)


@signals.beat_embedded_init.connect  # type: ignore[untyped-decorator]
def _beat_holds_foreign_stop(sender: Any = None, **_: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    asked = threading.Event()

    def obey() -> None:
        if asked.is_set():  # asked again: stop now
            hand_over()
            return
        asked.set()
        sender.stop()  # the loop ends after the tick it is on, then beat closes

    hold_foreign_sigterm("embedded beat", obey)


#: The signals that stop beat. SIGUSR2 is how an embedded beat's SIGTERM thread hands it
#: a SIGTERM from its worker, to act on at once (``stopping.HANDOFF``).
STOPPING = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGUSR2})


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold the signals that stop beat while a tick is numbered and sent, so that stopping
    beat cannot leave a number allocated for a tick that was never sent."""
    try:
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
    except (ValueError, OSError):  # not the main thread of a process: nothing to hold
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
