"""A model file served over HTTP by the standard library's server on 127.0.0.1, with an ETag,
``X-Content-SHA256`` and ``X-Model-Version`` as the service's ``/models/production/onnx`` sends
them, and ``If-None-Match`` answered with 304: the device side's tests run against it."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["ModelServer", "Served"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Served:
    """What the fake server answers; tests change it between pulls."""

    body: bytes = b""
    version: str = "v1"
    announced_sha256: str | None = None  # None: the body's own
    send_sha256: bool = True
    send_etag: bool = True
    status: int = 200
    error_body: bytes = b""
    requests: list[dict[str, str]] = field(default_factory=list)


class ModelServer:
    """``GET /model.onnx`` served from ``served`` on 127.0.0.1, with ETag and If-None-Match."""

    def __init__(self, body: bytes) -> None:
        self.served = Served(body=body)
        served = self.served

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.requests.append(dict(self.headers.items()))
                if served.status != 200:
                    self.send_response(served.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(served.error_body)))
                    self.end_headers()
                    self.wfile.write(served.error_body)
                    return
                sha256 = served.announced_sha256 or _sha256(served.body)
                etag = f'"{sha256}"'
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(served.body)))
                self.send_header("X-Model-Version", served.version)
                if served.send_etag:
                    self.send_header("ETag", etag)
                if served.send_sha256:
                    self.send_header("X-Content-SHA256", sha256)
                self.end_headers()
                self.wfile.write(served.body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.onnx"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)
