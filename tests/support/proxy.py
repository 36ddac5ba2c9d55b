"""A TCP proxy on loopback that a run can cut silently: bytes are dropped, no FIN, no RST.

The fault suite and ``scripts/chaos --cluster`` use it.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading


class Proxy:
    """Forwards 127.0.0.1:<port> to ``target``; ``cut()`` drops everything until ``restore()``."""

    def __init__(self, target: tuple[str, int] = ("127.0.0.1", 5672)) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port: int = self.listener.getsockname()[1]
        self._cut = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def cut(self) -> None:
        self._cut.set()

    def restore(self) -> None:
        self._cut.clear()

    @property
    def is_cut(self) -> bool:
        return self._cut.is_set()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for sock in [self.listener, *self._sockets]:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(
                target=self._pump, args=(client, upstream), name="proxy-pump", daemon=True
            ).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        sel = selectors.DefaultSelector()
        for sock in peer:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        try:
            while not self._closed.is_set():
                for key, _ in sel.select(timeout=0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    if not data:
                        return
                    if self._cut.is_set():
                        continue  # dropped on the floor, as a dead network would
                    peer[src].setblocking(True)
                    peer[src].sendall(data)
                    peer[src].setblocking(False)
        except OSError:
            return
        finally:
            sel.close()
            for sock in peer:
                with contextlib.suppress(OSError):
                    sock.close()
