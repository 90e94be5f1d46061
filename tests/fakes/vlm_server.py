"""A real OpenAI-compatible VLM server on loopback, for tests, benchmarks and service tests.

``FakeVLMServer`` runs a small Starlette app under uvicorn in a background thread on 127.0.0.1
(a free port), speaking ``POST /v1/chat/completions`` (with ``logprobs``/``top_logprobs``) and
moondream's ``POST /v1/query``. It is scripted, records every request, and injects faults::

    with FakeVLMServer(script=lambda request: "Yes", latency_s=0.1) as server:
        verifier = OpenAIVerifier("fake", url=server.base_url)
        ...
        assert server.requests[0].prompt_text.startswith("Is this")

Faults come by sequence (``faults=[Fault.rate_limit(0.2), None, Fault.server_error()]``: the
n-th model request gets the n-th entry) or by rate (``fault_rate=0.1, fault=Fault.hang()``,
drawn from a seeded RNG in arrival order). Everything else is deterministic.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["FakeVLMServer", "Fault", "RecordedRequest", "Reply"]

FaultKind = Literal["rate_limit", "server_error", "hang", "garbage", "invalid_json", "bad_request"]
GARBAGE_TEXT = "¯\\_(ツ)_/¯ ##### lorem ipsum \u0000\ufffd <|endoftext|>"


@dataclass(frozen=True)
class Reply:
    """What the scripted model says; ``top_logprobs`` (token, logprob) pairs for the first token
    override the ones the server derives from ``text``; ``confidences`` give the n-th yes/no word
    of the reply its own confidence (marks replies) instead of the server's."""

    text: str
    top_logprobs: Sequence[tuple[str, float]] | None = None
    confidences: Sequence[float] | None = None


@dataclass(frozen=True)
class Fault:
    """One injected failure.

    rate_limit: 429 with ``Retry-After: retry_after_s`` (header left out when None);
    server_error: 500; hang: no answer for ``hang_s`` (or until the server stops);
    garbage: 200 with nonsense text; invalid_json: 200 whose body is not JSON;
    bad_request: 400 with an OpenAI-style error body.
    """

    kind: FaultKind
    retry_after_s: float | None = None
    hang_s: float = 30.0

    @classmethod
    def rate_limit(cls, retry_after_s: float | None = None) -> Fault:
        return cls("rate_limit", retry_after_s=retry_after_s)

    @classmethod
    def server_error(cls) -> Fault:
        return cls("server_error")

    @classmethod
    def hang(cls, hang_s: float = 30.0) -> Fault:
        return cls("hang", hang_s=hang_s)

    @classmethod
    def garbage(cls) -> Fault:
        return cls("garbage")

    @classmethod
    def invalid_json(cls) -> Fault:
        return cls("invalid_json")

    @classmethod
    def bad_request(cls) -> Fault:
        return cls("bad_request")


@dataclass
class RecordedRequest:
    """One request the server received, as it arrived."""

    index: int  # arrival order among model requests, from 0
    path: str
    body: Any  # the decoded JSON body (None when it was not JSON)
    headers: dict[str, str]
    received_at: float  # time.monotonic() on arrival
    fault: Fault | None = None
    status: int | None = None  # what the server answered (None while in flight)

    @property
    def prompt_text(self) -> str:
        """The text parts of the chat messages (or moondream's ``question``), joined by newlines."""
        body = self.body if isinstance(self.body, dict) else {}
        if "question" in body:
            return str(body["question"])
        parts: list[str] = []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(
                    str(p.get("text", ""))
                    for p in content
                    if isinstance(p, dict) and p.get("type") == "text"
                )
        return "\n".join(parts)

    @property
    def image_urls(self) -> list[str]:
        """Every image URL (usually a data URL) in the request."""
        body = self.body if isinstance(self.body, dict) else {}
        if "image_url" in body:
            return [str(body["image_url"])]
        urls: list[str] = []
        for message in body.get("messages") or []:
            content = message.get("content") if isinstance(message, dict) else None
            for part in content if isinstance(content, list) else []:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    image_url = part.get("image_url")
                    url = image_url.get("url") if isinstance(image_url, dict) else image_url
                    urls.append(str(url))
        return urls

    def images(self) -> list[Image.Image]:
        """The request's data-URL images, decoded."""
        decoded = []
        for url in self.image_urls:
            _, _, payload = url.partition("base64,")
            with Image.open(io.BytesIO(base64.b64decode(payload))) as image:
                decoded.append(image.convert("RGB"))
        return decoded

    @property
    def wants_logprobs(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("logprobs"))


Script = Callable[[RecordedRequest], "str | Reply"]


def _default_script(request: RecordedRequest) -> str:
    return "Yes"


# How the fake model splits a reply into tokens: words with the space before them, and runs of
# punctuation ('{"', '1', '":', ' "', 'yes', '"}').
_TOKEN = re.compile(r"\s*[A-Za-z0-9']+|\s*[^\sA-Za-z0-9']+|\s+")


def _first_word(text: str) -> str:
    stripped = text.lstrip()
    end = 0
    while end < len(stripped) and (stripped[end].isalnum() or stripped[end] in "'"):
        end += 1
    return stripped[:end] if end else stripped[:1]


def derived_top_logprobs(text: str, confidence: float) -> list[tuple[str, float]]:
    """First-token alternatives consistent with ``text``: a reply that starts with yes (no) puts
    ``confidence`` on yes (no) tokens, split over "Yes"/" yes" variants, and the rest on the
    other answer, so the calibrated P(yes) is exactly ``confidence`` (or 1 - confidence)."""
    word = _first_word(text)
    lowered = word.lower()
    if lowered not in {"yes", "no"}:
        return [(word or " ", math.log(0.99))]
    other = "No" if lowered == "yes" else "Yes"
    main, rest = confidence, 1.0 - confidence
    pairs = [(word, main * 0.9), (" " + lowered, main * 0.1)]
    if rest > 0:
        pairs += [(other, rest * 0.9), (" " + other.lower(), rest * 0.1)]
    return [(token, math.log(prob)) for token, prob in pairs if prob > 0]


class FakeVLMServer:
    """A scripted OpenAI-compatible server on loopback; use as a context manager."""

    def __init__(
        self,
        script: Script | None = None,
        *,
        latency_s: float = 0.0,
        max_concurrency: int | None = None,
        faults: Sequence[Fault | None] = (),
        fault_rate: float = 0.0,
        fault: Fault | None = None,
        seed: int = 0,
        logprobs: bool = True,
        reject_logprobs: bool = False,
        confidence: float = 0.9,
        model_name: str = "fake-vlm",
    ) -> None:
        """``latency_s``: time each answer takes; ``max_concurrency``: requests processed at
        once (later ones queue server-side); ``logprobs``: whether answers carry logprobs when
        asked; ``reject_logprobs``: answer 400 to any request that asks for them."""
        if fault_rate and fault is None:
            raise ValueError("fault_rate needs a fault")
        self.script: Script = script or _default_script
        self.latency_s = latency_s
        self.max_concurrency = max_concurrency
        self.faults = list(faults)
        self.fault_rate = fault_rate
        self.fault = fault
        self.logprobs = logprobs
        self.reject_logprobs = reject_logprobs
        self.confidence = confidence
        self.model_name = model_name
        self.requests: list[RecordedRequest] = []
        self.peak_in_flight = 0  # most requests open at once (queued or processing)
        self.peak_processing = 0  # most requests past the server's concurrency limit at once
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._processing = 0
        self._stopping = False
        self._semaphore: asyncio.Semaphore | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/query", self._moondream_query, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                # For a server in another process: counters to read, and a reset.
                Route("/fake/stats", self._stats, methods=["GET"]),
                Route("/fake/reset", self._reset, methods=["POST"]),
            ]
        )

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the OpenAI SDK's base_url and moondream's endpoint."""
        if self.port is None:
            raise RuntimeError("the server is not running")
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeVLMServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="asyncio",
            ws="none",
            backlog=1024,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-vlm-server", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake VLM server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeVLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget recorded requests and peaks (faults by sequence restart from the first)."""
        with self._lock:
            self.requests.clear()
            self.peak_in_flight = 0
            self.peak_processing = 0

    @property
    def model_requests(self) -> list[RecordedRequest]:
        """Recorded requests to the model endpoints, in arrival order."""
        with self._lock:
            return list(self.requests)

    # --- handlers -------------------------------------------------------------------------------

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": self.model_name, "object": "model"}]}
        )

    async def _stats(self, request: Request) -> Response:
        with self._lock:
            return JSONResponse(
                {
                    "requests": len(self.requests),
                    "statuses": [r.status for r in self.requests],
                    "peak_in_flight": self.peak_in_flight,
                    "peak_processing": self.peak_processing,
                }
            )

    async def _reset(self, request: Request) -> Response:
        self.reset()
        return JSONResponse({"reset": True})

    async def _record(self, request: Request) -> RecordedRequest:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            index = len(self.requests)
            if index < len(self.faults):
                fault = self.faults[index]
            elif self.fault_rate and self._rng.random() < self.fault_rate:
                fault = self.fault
            else:
                fault = None
            recorded = RecordedRequest(
                index=index,
                path=request.url.path,
                body=body,
                headers=dict(request.headers),
                received_at=time.monotonic(),
                fault=fault,
            )
            self.requests.append(recorded)
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        return recorded

    async def _serve(
        self, request: Request, answer: Callable[[RecordedRequest], Response]
    ) -> Response:
        recorded = await self._record(request)
        try:
            if self._semaphore is None:
                self._semaphore = asyncio.Semaphore(self.max_concurrency or 1_000_000)
            async with self._semaphore:
                with self._lock:
                    self._processing += 1
                    self.peak_processing = max(self.peak_processing, self._processing)
                try:
                    response = await self._respond(recorded, answer)
                finally:
                    with self._lock:
                        self._processing -= 1
        finally:
            with self._lock:
                self._in_flight -= 1
        recorded.status = response.status_code
        return response

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))

    async def _respond(
        self, recorded: RecordedRequest, answer: Callable[[RecordedRequest], Response]
    ) -> Response:
        if self.latency_s:
            await self._sleep(self.latency_s)
        if recorded.body is None:
            return _error(400, "the request body is not JSON")
        fault = recorded.fault
        if fault is not None and fault.kind == "hang":
            await self._sleep(fault.hang_s)
        elif fault is not None and fault.kind == "rate_limit":
            headers = (
                {} if fault.retry_after_s is None else {"retry-after": f"{fault.retry_after_s:g}"}
            )
            return _error(429, "rate limit reached, slow down", headers=headers)
        elif fault is not None and fault.kind == "server_error":
            return _error(500, "the fake model crashed")
        elif fault is not None and fault.kind == "bad_request":
            return _error(400, "bad request")
        elif fault is not None and fault.kind == "invalid_json":
            return Response('{"id": "chatcmpl-1", "choices": [', media_type="application/json")
        return answer(recorded)

    def _script_reply(self, recorded: RecordedRequest) -> Reply:
        if recorded.fault is not None and recorded.fault.kind == "garbage":
            return Reply(GARBAGE_TEXT)
        result = self.script(recorded)
        return result if isinstance(result, Reply) else Reply(str(result))

    async def _chat_completions(self, request: Request) -> Response:
        return await self._serve(request, self._chat_answer)

    def _chat_answer(self, recorded: RecordedRequest) -> Response:
        if recorded.wants_logprobs and self.reject_logprobs:
            return _error(400, "logprobs are not supported by this model", param="logprobs")
        reply = self._script_reply(recorded)
        logprobs = None
        if recorded.wants_logprobs and self.logprobs:
            count = int(recorded.body.get("top_logprobs") or 0)
            content = []
            answers_seen = 0
            for position, token in enumerate(_TOKEN.findall(reply.text.lstrip()) or [" "]):
                if position == 0 and reply.top_logprobs is not None:
                    top = list(reply.top_logprobs)
                elif token.strip().lower() in {"yes", "no"}:
                    confidence = self.confidence
                    if reply.confidences is not None and answers_seen < len(reply.confidences):
                        confidence = reply.confidences[answers_seen]
                    answers_seen += 1
                    top = derived_top_logprobs(token, confidence)
                else:
                    top = [(token, math.log(0.99))]
                content.append(
                    {
                        "token": token,
                        "logprob": next((lp for t, lp in top if t == token), top[0][1]),
                        "bytes": list(token.encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode())}
                            for t, lp in top[:count]
                        ],
                    }
                )
            logprobs = {"content": content, "refusal": None}
        return JSONResponse(
            {
                "id": f"chatcmpl-fake-{recorded.index}",
                "object": "chat.completion",
                "created": 0,
                "model": self.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "finish_reason": "stop",
                        "logprobs": logprobs,
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    async def _moondream_query(self, request: Request) -> Response:
        return await self._serve(request, self._moondream_answer)

    def _moondream_answer(self, recorded: RecordedRequest) -> Response:
        reply = self._script_reply(recorded)
        return JSONResponse({"request_id": f"md-{recorded.index}", "answer": reply.text})


def _error(
    status: int, message: str, *, headers: dict[str, str] | None = None, param: str | None = None
) -> Response:
    body = {"error": {"message": message, "type": "fake_error", "param": param, "code": None}}
    return JSONResponse(body, status_code=status, headers=headers)
