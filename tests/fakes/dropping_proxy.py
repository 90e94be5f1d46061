"""A loopback HTTP proxy that drops the connection of chosen requests: a network that fails
mid-upload, for the tests of clients that must resume without sending anything twice.

One request per connection (the client sends ``Connection: close``, as ``urllib`` does).
``mode="request"``: the connection closes after half the request body arrived, so the server
never sees it. ``mode="response"``: the whole request reaches the server, whose answer is then
thrown away, so the server did the work but the client never hears of it.
"""

from __future__ import annotations

import socket
import threading
from typing import Literal

__all__ = ["DroppingProxy"]


def _read_head(connection: socket.socket) -> tuple[bytes, bytes]:
    """The request head (through the blank line) and what of the body came with it."""
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


class DroppingProxy:
    """``with DroppingProxy(port, drop_first=1, match=b"POST ") as proxy: proxy.url``."""

    def __init__(
        self,
        upstream_port: int,
        *,
        drop_first: int = 1,
        match: bytes = b"POST ",
        mode: Literal["request", "response"] = "response",
    ) -> None:
        self.upstream_port = upstream_port
        self.drop_first = drop_first
        self.match = match
        self.mode = mode
        self.dropped = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="dropping-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> DroppingProxy:
        self._listener.listen(16)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._listener.close()
        self._thread.join(timeout=5.0)

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed: the proxy stops
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _should_drop(self, head: bytes) -> bool:
        with self._lock:
            if head.startswith(self.match) and self.dropped < self.drop_first:
                self.dropped += 1
                return True
            return False

    def _relay(self, client: socket.socket) -> None:
        with client:
            head, body = _read_head(client)
            length = _content_length(head)
            drop = self._should_drop(head)
            if drop and self.mode == "request":
                while len(body) < length // 2:
                    chunk = client.recv(65536)
                    if not chunk:
                        break
                    body += chunk
                return  # closed mid-upload: the server never hears of it
            while len(body) < length:
                chunk = client.recv(65536)
                if not chunk:
                    return
                body += chunk
            with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                upstream.sendall(head + body)
                answer = b""
                while chunk := upstream.recv(65536):
                    answer += chunk
            if not drop:
                client.sendall(answer)
            # else: the server answered; the client's connection closes without the answer
