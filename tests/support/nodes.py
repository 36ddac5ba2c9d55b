"""A RabbitMQ node and a Redis of their own, for runs that break them on purpose.

``scripts/chaos`` and the fault suite start these under a directory of their own
and on free localhost ports, from the ``rabbitmq-server`` and ``redis-server``
already installed, so that stopping or killing them never touches the default
RabbitMQ on 5672 or the default Redis on 6379.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import redis

from pubtasks.bench.waiting import wait_for


def ephemeral_start(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The lowest port the kernel hands to outgoing connections (32768 on Linux's
    default, and where the file cannot be read)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A localhost port nothing listens on, chosen below the kernel's ephemeral range
    when there is room (from 20000): a port from that range can be taken by any
    outgoing connection between this probe and the server's own bind, and CI makes
    thousands of them while a RabbitMQ node boots (the likely cause of a chaos run's
    Redis that never answered at its first start, on CI)."""
    top = ephemeral_start()
    for _ in range(200 if top - 20000 >= 1000 else 0):
        port = random.randrange(20000, top)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def accepting(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class RabbitNode:
    """``rabbitmq-server`` as node ``<name>@localhost`` with its data, logs, config and
    plugins (none: no management port) under ``directory``."""

    def __init__(
        self,
        directory: Path,
        name: str,
        port: int | None = None,
        dist_port: int | None = None,
        config: str = "",
    ) -> None:
        self.config = config  # more lines of rabbitmq.conf (a TLS listener, say)
        self.directory = directory
        self.node = f"{name}@localhost"
        self.port = port or free_port()
        self.dist_port = dist_port or free_port()
        self.env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(directory / "log"),
            "RABBITMQ_PID_FILE": str(directory / "rabbitmq.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(directory / "enabled_plugins"),
            # Not the system's rabbitmq.conf: it names the default node's listener.
            "RABBITMQ_CONFIG_FILE": str(directory / "rabbitmq.conf"),
        }

    def url(self, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n NODE -q ARGS``; what it printed."""
        out = subprocess.run(
            ["rabbitmqctl", "-n", self.node, "-q", *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return out.stdout

    def start(self, timeout: float = 90) -> None:
        left = vm_of(self.node)  # one of the same name left running would stop this one
        if left is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(left, signal.SIGKILL)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "enabled_plugins").write_text("[].\n")
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\n{self.config}"
        )
        if os.geteuid() == 0:  # rabbitmq-server runs as the rabbitmq user when started by root
            with contextlib.suppress(KeyError, LookupError):
                for path in [self.directory, *self.directory.rglob("*")]:
                    shutil.chown(path, "rabbitmq", "rabbitmq")
        subprocess.run(
            ["rabbitmq-server", "-detached"], env=self.env, check=True, capture_output=True
        )
        try:
            wait_for(lambda: accepting(self.port), timeout, f"RabbitMQ node {self.node}", 0.2)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; the end of its log:\n{self.log_tail()}") from None
        self.ctl("await_startup")

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` of the node's logs (what a failed start said)."""
        text = []
        for path in sorted((self.directory / "log").glob("*.log")):
            with contextlib.suppress(OSError):
                text += [f"{path.name}: {line}" for line in path.read_text().splitlines()]
        return "\n".join(text[-lines:]) or "(no log)"

    def pid(self) -> int | None:
        """The node's OS process (the Erlang VM): from its pid file, or, before the node
        has written one (still booting), the VM whose command line names the node."""
        with contextlib.suppress(OSError, ValueError):
            return int((self.directory / "rabbitmq.pid").read_text().strip())
        return vm_of(self.node)

    def kill(self) -> None:
        """SIGKILL the node's VM: a crash, as far as the other nodes and the clients see."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(lambda: not accepting(self.port), 30, f"{self.node} to die", 0.02)

    def stop(self) -> None:
        """Stop the node, whatever state it is in (its app stopped, say)."""
        try:
            self.ctl("stop", timeout=60)
        except (OSError, subprocess.SubprocessError):
            pid_file = self.directory / "rabbitmq.pid"
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


def vm_of(node: str) -> int | None:
    """The pid of the Erlang VM running RabbitMQ node ``node`` (``name@host``), if any:
    the ``beam`` process started with ``RABBITMQ_NODENAME`` set to it."""
    wanted = f"RABBITMQ_NODENAME={node}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if b"beam" not in (entry / "cmdline").read_bytes().split(b"\0")[0]:
                continue
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                return int(entry.name)
    return None


class RedisNode:
    """``redis-server`` on a free port, with append-only persistence that is fsynced at
    every write, so that a SIGKILL loses nothing a client was told was written."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(directory), "--appendonly", "yes", "--appendfsync", "always",
            "--save", "", "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        self.log = directory / "redis.log"
        self.started = False  # once it has answered, its port is its clients' and stays
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it (again, after ``kill``: the same port and AOF) and wait until it
        answers. If it exits first, say so at once with the end of its log; on its
        first start, a port taken since it was chosen gets a fresh one (twice at most)."""
        for attempt in range(3):
            proc = self.proc = subprocess.Popen(self.args)
            client = redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2)
            try:
                wait_for(
                    lambda: proc.poll() is not None or pings(client),  # noqa: B023
                    30,
                    "Redis to load its AOF and answer",
                    0.05,
                )
            finally:
                client.close()
            if proc.poll() is None:
                self.started = True
                return
            tail = self.log_tail()
            if self.started or attempt == 2 or "Address already in use" not in tail:
                raise RuntimeError(f"redis-server on port {self.port} exited:\n{tail}")
            self._move(free_port())

    def _move(self, port: int) -> None:
        self.args[self.args.index(str(self.port))] = str(port)
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text().splitlines()[-lines:]) or "(no log)"
        return "(no log)"

    def stop(self) -> None:
        """A clean shutdown: the AOF is written out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(20)

    def kill(self) -> None:
        """SIGKILL: only what the AOF has survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(20)


def pings(client: redis.Redis) -> bool:
    """Whether Redis answers (False while it is down or loading)."""
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.BusyLoadingError):
        return False
