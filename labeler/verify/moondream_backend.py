"""Verifier backend for Moondream: its HTTP ``POST /query`` API, spoken with httpx.

Moondream Cloud (key in ``MOONDREAM_API_KEY``) and a local Moondream Station server
(``--verifier-url http://localhost:2020/v1``, no key) take the same request: a JPEG data URL and
a question, answered with ``{"answer": ...}``. The ``moondream`` package's client sends exactly
that, but through ``urllib`` without a timeout, so a server that stops answering holds a thread
forever; after a few of those every later call waits for a free thread. httpx gives each request
a real timeout and needs no thread; retries (with ``Retry-After``) are done here.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import math
import os
import time
from typing import Any

import httpx
from PIL import Image

from labeler.core.exceptions import InputError, VerifierError, VerifierRateLimited
from labeler.verify.base import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    Completion,
    VerifierBase,
)
from labeler.verify.http_client import verifier_http_client
from labeler.verify.identity import MOONDREAM_DEFAULT_ENDPOINT as DEFAULT_ENDPOINT
from labeler.verify.render import encode_jpeg_data_url
from labeler.verify.templates import DEFAULT_VERIFY_MODE

__all__ = ["DEFAULT_ENDPOINT", "MoondreamVerifier"]

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset({408, 409, 429})
_MAX_RETRY_AFTER_S = 60.0
_MAX_BACKOFF_S = 8.0


def _retry_after_s(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        if parsed is None:
            return None
        seconds = email.utils.mktime_tz(parsed) - time.time()
    return seconds if math.isfinite(seconds) and 0 <= seconds <= _MAX_RETRY_AFTER_S else None


class MoondreamVerifier(VerifierBase):
    """Asks Moondream's ``query`` about each crop (or about numbered boxes in marks mode)."""

    def __init__(
        self,
        model: str | None = None,
        *,
        url: str | None = None,
        api_key: str | None = None,
        mode: str = DEFAULT_VERIFY_MODE,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_base_delay_s: float = 0.5,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        """Raises InputError when Moondream Cloud is used without an API key. ``http_client``
        is used as given and not closed by ``aclose``."""
        model_id = "moondream" if model is None else f"moondream:{model}"
        super().__init__(model_id=model_id, mode=mode, concurrency=concurrency)
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_base_delay_s = retry_base_delay_s
        self.endpoint = (url or DEFAULT_ENDPOINT).rstrip("/")
        key = api_key or os.environ.get("MOONDREAM_API_KEY")
        if not key and self.endpoint == DEFAULT_ENDPOINT:
            raise InputError(
                f"verifier {model_id} needs an API key for Moondream Cloud: set "
                "MOONDREAM_API_KEY, or pass --verifier-url http://localhost:2020/v1 for a "
                "local Moondream Station server"
            )
        self._headers = {"X-Moondream-Auth": key} if key else {}
        self._owns_http_client = http_client is None
        if http_client is None:
            http_client = verifier_http_client(concurrency=concurrency, timeout_s=timeout_s)
        self._http_client = http_client

    async def aclose(self) -> None:
        if self._owns_http_client:
            await self._http_client.aclose()

    def _prepare(self, image: Image.Image) -> str:
        return encode_jpeg_data_url(image, quality=95)  # what the moondream client sends

    async def _complete(self, payload: str, prompt: str, *, marks: int) -> Completion:
        request: dict[str, Any] = {"image_url": payload, "question": prompt, "stream": False}
        if self.model is not None:
            request["model"] = self.model
        for attempt in range(self.max_retries + 1):
            delay: float | None = None
            try:
                response = await self._http_client.post(
                    f"{self.endpoint}/query",
                    json=request,
                    headers=self._headers,
                    timeout=self.timeout_s,
                )
            except httpx.TransportError as exc:  # timeouts, refused and dropped connections
                if attempt == self.max_retries:
                    raise VerifierError(f"moondream request failed: {exc!r}") from exc
            else:
                status = response.status_code
                if status < 400:
                    return Completion(text=_answer(response))
                delay = _retry_after_s(response)
                if not (status in _RETRY_STATUSES or status >= 500) or attempt == self.max_retries:
                    error_type = VerifierRateLimited if status == 429 else VerifierError
                    raise error_type(f"moondream answered HTTP {status}: {response.reason_phrase}")
            self.stats.retries += 1
            if delay is None:
                delay = min(self.retry_base_delay_s * 2**attempt, _MAX_BACKOFF_S)
            logger.info("verifier %s: retrying in %.2f s", self.model_id, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")


def _answer(response: httpx.Response) -> str:
    try:
        result = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        result = None
    answer = result.get("answer") if isinstance(result, dict) else None
    if not isinstance(answer, str):
        raise VerifierError(f"moondream's reply has no text answer: {response.text!r:.200}")
    return answer
