"""An ASGI app served by uvicorn on 127.0.0.1 in a thread of this process: what a real browser
needs (TestClient has no socket). The pages' browser tests and the page benchmark use it."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

__all__ = ["LiveApp"]


class LiveApp:
    """``with LiveApp(app) as live: live.url("/review/")``; the app's lifespan runs."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> LiveApp:
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, loop="asyncio", ws="none"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="live-app", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 20.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the app did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15.0)
