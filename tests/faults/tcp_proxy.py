"""A TCP relay on 127.0.0.1 that a test can stall and cut: the network between one device and the aggregator.

Bytes are relayed as they are (TLS passes through untouched). ``pause()`` stops relaying and accepting,
so connections hang as behind a dead link; ``cut()`` then closes every connection; ``resume()`` lets new
connections through again.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable


class TcpProxy:
    def __init__(self, upstream: Callable[[], tuple[str, int] | None], host: str = "127.0.0.1") -> None:
        """``upstream()`` gives the address to relay to, or None while it is not known yet."""
        self.upstream = upstream
        self.server = socket.create_server((host, 0))
        self.port = int(self.server.getsockname()[1])
        self.connections = 0
        self.cuts = 0
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._running = threading.Event()
        self._running.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def cut(self) -> int:
        """Close every open connection; returns how many pairs were cut."""
        with self._lock:
            pairs = {frozenset((a, b)) for a, b in self._pairs.items()}
            for a in list(self._pairs):
                a.close()
            self._pairs.clear()
            self.cuts += len(pairs)
            return len(pairs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.cut()
        self.server.close()

    def _accept(self) -> None:
        client, _ = self.server.accept()
        target = self.upstream()
        if target is None:
            client.close()
            return
        try:
            upstream = socket.create_connection(target, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._pairs[client], self._pairs[upstream] = upstream, client
            self.connections += 1

    def _relay(self, src: socket.socket) -> None:
        with self._lock:
            dst = self._pairs.get(src)
        if dst is None:
            return
        try:
            data = src.recv(1 << 16)
            if data:
                dst.sendall(data)
                return
        except OSError:
            pass
        with self._lock:  # one side closed: close both
            for s in (src, dst):
                self._pairs.pop(s, None)
                s.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._running.wait(0.1):
                continue
            with self._lock:
                socks = [self.server, *self._pairs]
            sel = selectors.DefaultSelector()
            for s in socks:
                with contextlib.suppress(ValueError, OSError):  # closed by cut() meanwhile
                    sel.register(s, selectors.EVENT_READ)
            try:
                ready = sel.select(0.1)
            finally:
                sel.close()
            for key, _ in ready:
                if not self._running.is_set():
                    break
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if sock is self.server:
                    self._accept()
                else:
                    self._relay(sock)
