"""Verifier backend for OpenAI and OpenAI-compatible servers (vLLM, Ollama, LM Studio, ...).

Uses the official SDK with an injected ``httpx.AsyncClient`` and the SDK's own retries: it backs
off exponentially on 408/409/429/5xx, connection errors and timeouts, and honours a server's
``Retry-After`` / ``retry-after-ms`` header up to two minutes (``openai/_base_client.py``,
``_calculate_retry_timeout`` and ``_should_retry``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai
from openai.types.chat import ChatCompletion
from PIL import Image

from labeler.core.exceptions import InputError, VerifierError
from labeler.verify.base import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT_S,
    Completion,
    VerifierBase,
)
from labeler.verify.http_client import verifier_http_client
from labeler.verify.identity import openai_base_url
from labeler.verify.parse import yes_prob_from_logprob_positions
from labeler.verify.render import encode_jpeg_data_url
from labeler.verify.templates import DEFAULT_VERIFY_MODE

__all__ = ["OpenAIVerifier"]

logger = logging.getLogger(__name__)

_CROP_MAX_TOKENS = 8  # "Yes." plus slack; the answer is the first word
_MARKS_BASE_TOKENS = 24  # braces, code fence
_MARKS_TOKENS_PER_BOX = 8  # '"12": "yes", '
_TOP_LOGPROBS = 5


class _CountingAsyncOpenAI(openai.AsyncOpenAI):
    """AsyncOpenAI that reports each retry it schedules and can scale its exponential backoff.

    The scale exists so tests and benchmarks do not wait seconds; a delay the server asked for
    with Retry-After is kept as it is.
    """

    def __init__(
        self, *, on_retry: Callable[[], None], backoff_scale: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self._on_retry = on_retry
        self._backoff_scale = backoff_scale

    def _calculate_retry_timeout(
        self, remaining_retries: int, options: Any, response_headers: Any = None
    ) -> float:
        self._on_retry()
        delay = float(
            super()._calculate_retry_timeout(remaining_retries, options, response_headers)
        )
        retry_after = self._parse_retry_after_header(response_headers)
        if retry_after is not None and math.isfinite(retry_after) and delay == retry_after:
            return delay
        return delay * self._backoff_scale


def _is_openai_host(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    return host == "openai.com" or host.endswith(".openai.com")


class OpenAIVerifier(VerifierBase):
    """Asks a chat-completions endpoint about crops or numbered boxes, with logprobs (P(yes) per
    crop, or per numbered box) when the server gives them."""

    def __init__(
        self,
        model: str,
        *,
        url: str | None = None,
        api_key: str | None = None,
        mode: str = DEFAULT_VERIFY_MODE,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        http_client: httpx.AsyncClient | None = None,
        retry_backoff_scale: float = 1.0,
    ) -> None:
        """Raises InputError when no API key is set for OpenAI's own API.

        ``url`` overrides ``OPENAI_BASE_URL`` (the SDK's default is OpenAI's API). A server of
        your own needs no key. ``http_client`` is used as given and not closed by ``aclose``.
        """
        super().__init__(model_id=f"openai:{model}", mode=mode, concurrency=concurrency)
        self.model = model
        base_url = openai_base_url(url)
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if _is_openai_host(base_url):
                raise InputError(
                    f"verifier {self.model_id} needs an API key: set OPENAI_API_KEY, or point "
                    "--verifier-url (or OPENAI_BASE_URL) at an OpenAI-compatible server of your "
                    "own (vLLM, Ollama, ...), which needs none"
                )
            key = "EMPTY"  # local servers ignore the key; the SDK insists on one
        self.base_url = base_url
        self._owns_http_client = http_client is None
        if http_client is None:
            http_client = verifier_http_client(concurrency=concurrency, timeout_s=timeout_s)
        self._http_client = http_client
        self._client = _CountingAsyncOpenAI(
            on_retry=self._count_retry,
            backoff_scale=retry_backoff_scale,
            api_key=key,
            base_url=base_url,
            http_client=http_client,
            max_retries=max_retries,
            timeout=timeout_s,
        )
        # Flipped to False the first time the server refuses logprobs and accepts the request
        # without them; later requests then skip the doomed first try.
        self.logprobs_supported = True

    def _count_retry(self) -> None:
        self.stats.retries += 1

    async def aclose(self) -> None:
        if self._owns_http_client:
            await self._http_client.aclose()

    def _prepare(self, image: Image.Image) -> str:
        return encode_jpeg_data_url(image)

    async def _complete(self, payload: str, prompt: str, *, marks: int) -> Completion:
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": payload}},
            {"type": "text", "text": prompt},
        ]
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": 0,
            "max_tokens": (
                _MARKS_BASE_TOKENS + _MARKS_TOKENS_PER_BOX * marks if marks else _CROP_MAX_TOKENS
            ),
        }
        want_logprobs = self.logprobs_supported
        if want_logprobs:
            try:
                response = await self._client.chat.completions.create(
                    **request, logprobs=True, top_logprobs=_TOP_LOGPROBS
                )
            except openai.BadRequestError as exc:
                logger.info(
                    "verifier %s: request with logprobs refused (%s); retrying without",
                    self.model_id,
                    exc.message,
                )
                self.stats.calls += 1
                response = await self._client.chat.completions.create(**request)
                self.logprobs_supported = False
                want_logprobs = False
        else:
            response = await self._client.chat.completions.create(**request)
        return _completion_from_response(response, with_logprobs=want_logprobs)


def _completion_from_response(response: object, *, with_logprobs: bool) -> Completion:
    if not isinstance(response, ChatCompletion):
        raise VerifierError(f"the server's reply is not a chat completion: {str(response)[:200]!r}")
    if not response.choices:
        raise VerifierError("the server's reply has no choices")
    choice = response.choices[0]
    text = choice.message.content or choice.message.refusal or ""
    if not (with_logprobs and choice.logprobs is not None and choice.logprobs.content):
        return Completion(text=text)
    tokens = tuple(
        (
            position.token,
            [(top.token, top.logprob) for top in position.top_logprobs or ()]
            or [(position.token, position.logprob)],
        )
        for position in choice.logprobs.content
    )
    yes_prob = yes_prob_from_logprob_positions([top for _, top in tokens])
    return Completion(text=text, yes_prob=yes_prob, tokens=tokens)
