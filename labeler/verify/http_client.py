"""The connection pool of the verifier backends that speak HTTP (OpenAI-compatible, Moondream)."""

from __future__ import annotations

import httpx

__all__ = ["verifier_http_client"]


def verifier_http_client(*, concurrency: int, timeout_s: float) -> httpx.AsyncClient:
    """Room for every request in flight plus a few being retried; each request bounded by
    ``timeout_s``, and connecting by at most 10 s of it (a dead host should fail fast)."""
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency),
        timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
    )
