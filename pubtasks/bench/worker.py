"""The real ``celery -A pubtasks worker -B`` as a subprocess, kept apart from any other.

The bench and the test suite run workers this way: each in a directory of its
own with a ``celeryconfig.py`` (``write_config``) whose statistics prefix and
Celery transport keys are named after one prefix (``celery_isolation``), so
that workers of different runs never share a queue or a key.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import TracebackType

from pubtasks.bench.waiting import wait_for

CELERY = str(Path(sys.executable).with_name("celery"))

#: A warm shutdown that begins as a pool process finishes a task can take 30 s: billiard
#: (4.3) then has that process wait up to 30 s for the main process, which has stopped
#: reading, to read its result; on a loaded machine (a parallel suite) 45 s was seen
#: not to be enough.
STOP_TIMEOUT = 75.0


def celery_isolation(prefix: str) -> dict[str, object]:
    """Celery settings that keep a worker's transport keys apart, all named after ``prefix``.

    Not kombu's ``global_keyprefix``: with it, a task requeued after a lost worker
    process was seen landing in the unprefixed ``celery`` list (kombu 5.7).
    """
    return {
        "task_default_queue": f"{prefix}celery",
        # No remote control: its pidbox binding would stay behind in Redis's shared
        # _kombu.binding_deadlines, and nothing here uses it.
        "worker_enable_remote_control": False,
        "broker_transport_options": {
            "visibility_timeout": 3600,
            "unacked_key": f"{prefix}unacked",
            "unacked_index_key": f"{prefix}unacked_index",
            "unacked_mutex_key": f"{prefix}unacked_mutex",
        },
    }


def write_config(directory: Path, prefix: str, body: str) -> None:
    """Write ``celeryconfig.py``: ``body``, then the isolation settings of ``prefix``."""
    isolation = "".join(f"{k} = {v!r}\n" for k, v in celery_isolation(prefix).items())
    text = textwrap.dedent(body) + f"STATS_PREFIX = {prefix!r}\n" + isolation
    (directory / "celeryconfig.py").write_text(text)


def rss_of_group(pgid: int) -> int:
    """Bytes of resident memory of every process in process group ``pgid``."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue
    return total


class Worker:
    """``celery -A pubtasks worker -B`` (or without ``-B``) in ``cwd``, in a session
    (process group) of its own.

    Its output goes to ``cwd/worker.log``. As a context manager it is started on
    entry and stopped on exit.
    """

    def __init__(
        self,
        cwd: Path,
        env: dict[str, str],
        concurrency: int = 2,
        name: str = "pubtasks",
        beat: bool = True,
    ) -> None:
        self.cwd = cwd
        self.env = env
        self.log_path = cwd / "worker.log"
        self.args = [
            CELERY, "-A", "pubtasks", "worker", *(["-B"] if beat else []), "-l", "info",
            "-c", str(concurrency), "--without-mingle", "--without-gossip",
            "-n", f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h",
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0  # the log's length when the worker was last started
        # The run's own clock (time.time()), for the account of what was due:
        self.first_start: float | None = None  # when it was first started
        self.last_stop: float | None = None  # when stop() last asked it to stop

    def start(self) -> Worker:
        self._started_at = self.log_path.stat().st_size if self.log_path.exists() else 0
        if self.first_start is None:
            self.first_start = time.time()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _hung(self, timeout: float) -> None:
        """A stop that did not end: have Celery log every thread's stack (its SIGUSR1
        handler) and show the log's tail, where a failing test's output has it."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGUSR1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(3)
        print(f"worker in {self.cwd}: still running {timeout:g} s after SIGTERM; its log ends:")
        print(self.log[-8000:])

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def current_log(self) -> str:
        """What the worker wrote since it was last started (not what an earlier run did)."""
        if not self.log_path.exists():
            return ""
        with self.log_path.open("rb") as log:
            log.seek(self._started_at)
            return log.read().decode(errors="replace")

    def wait_ready(self, timeout: float) -> None:
        """Return once the worker says it is ready; raise if it exits first."""

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the worker exited:\n{self.log[-2000:]}")
            return " ready." in self.current_log

        wait_for(ready, timeout, "the worker to be ready")

    def run_to_exit(self, timeout: float) -> tuple[int, str]:
        """Run until the worker exits by itself; return its exit code and output."""
        out = subprocess.run(
            self.args,
            check=False,
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return out.returncode, out.stdout + out.stderr

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """Warm shutdown (SIGTERM to the main process, as docker or systemd would send),
        then SIGKILL to the whole group if it lingers; return the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.last_stop = time.time()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._hung(timeout)
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError):  # pool children and beat left behind
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode
