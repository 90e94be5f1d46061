"""Verifier backend for Moondream, through the ``moondream`` package's client.

``moondream.vl(endpoint=..., api_key=...)`` speaks HTTP to Moondream Cloud (key in
``MOONDREAM_API_KEY``) or to a local Moondream Station server (``--verifier-url
http://localhost:2020/v1``, no key). Its ``query(image, question)`` is blocking and has no retries
or timeout of its own, so calls run in worker threads and are retried here.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import time
import urllib.error
from typing import Any

from PIL import Image

from labeler.exceptions import InputError, VerifierError, VerifierRateLimited
from labeler.verify.base import Completion, VerifierBase

__all__ = ["DEFAULT_ENDPOINT", "MoondreamVerifier"]

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://api.moondream.ai/v1"
_RETRY_STATUSES = frozenset({408, 409, 429})
_MAX_RETRY_AFTER_S = 60.0
_MAX_BACKOFF_S = 8.0


def _retry_after_s(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("retry-after") if exc.headers is not None else None
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
        mode: str = "crop",
        concurrency: int = 16,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        retry_base_delay_s: float = 0.5,
        client: Any = None,
    ) -> None:
        """``client`` replaces the ``moondream.vl`` client (anything with ``query(image,
        question) -> {"answer": str}``). Raises InputError when Moondream Cloud is used without
        an API key."""
        model_id = "moondream" if model is None else f"moondream:{model}"
        super().__init__(model_id=model_id, mode=mode, concurrency=concurrency)
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_base_delay_s = retry_base_delay_s
        if client is None:
            endpoint = (url or DEFAULT_ENDPOINT).rstrip("/")
            key = api_key or os.environ.get("MOONDREAM_API_KEY")
            if not key and endpoint == DEFAULT_ENDPOINT:
                raise InputError(
                    f"verifier {model_id} needs an API key for Moondream Cloud: set "
                    "MOONDREAM_API_KEY, or pass --verifier-url http://localhost:2020/v1 for a "
                    "local Moondream Station server"
                )
            import moondream

            client = moondream.vl(api_key=key, endpoint=endpoint, model=model)
        self._client = client

    async def _complete(self, payload: Image.Image, prompt: str, *, marks: int) -> Completion:
        for attempt in range(self.max_retries + 1):
            delay: float | None = None
            try:
                result = await asyncio.wait_for(
                    asyncio.to_thread(self._client.query, payload, prompt), self.timeout_s
                )
            except urllib.error.HTTPError as exc:
                status, delay = exc.code, _retry_after_s(exc)
                exc.close()  # the error holds the open response
                retryable = status in _RETRY_STATUSES or status >= 500
                if not retryable or attempt == self.max_retries:
                    error_type = VerifierRateLimited if status == 429 else VerifierError
                    raise error_type(f"moondream answered HTTP {status}: {exc.reason}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                # asyncio.TimeoutError is TimeoutError; the worker thread finishes on its own.
                if attempt == self.max_retries:
                    raise VerifierError(f"moondream request failed: {exc!r}") from exc
            else:
                answer = result.get("answer") if isinstance(result, dict) else None
                if not isinstance(answer, str):
                    raise VerifierError(f"moondream's reply has no text answer: {result!r:.200}")
                return Completion(text=answer)
            self.stats.retries += 1
            if delay is None:
                delay = min(self.retry_base_delay_s * 2**attempt, _MAX_BACKOFF_S)
            logger.info("verifier %s: retrying in %.2f s", self.model_id, delay)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last attempt returns or raises")
