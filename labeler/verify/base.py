"""The verifier interface: image + boxes + questions in, one yes/no/unknown Verdict per box out.

Backends are picked by name in ``labeler.verify.registry`` (``"openai:gpt-4o-mini"``,
``"transformers:/models/smolvlm"``, ``"moondream"``). Every backend shares ``VerifierBase``, which
owns what does not depend on the model: cropping or drawing marks, prompts, bounded concurrency,
parsing, and turning every backend failure into an "unknown" verdict instead of an exception.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from PIL import Image

from labeler.core.exceptions import InputError
from labeler.ontology import OntologyClass
from labeler.verify.parse import Answer, ScoredToken, marks_yes_probs, parse_marks, parse_yes_no
from labeler.verify.render import CropOptions, MarksOptions, crop_with_context, draw_marks
from labeler.verify.templates import (
    DEFAULT_VERIFY_MODE,
    Mode,
    TemplateSet,
    check_verify_mode,
    default_question,
    template_set,
)

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT_S",
    "Answer",
    "Completion",
    "LoopLocal",
    "Verdict",
    "Verifier",
    "VerifierBase",
    "VerifierStats",
    "question_for",
    "verdict_cache_key",
]

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 16  # verifier requests in flight at once
# For the backends that speak HTTP: one request's limit, and retries after a 429, 5xx or timeout.
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 5
MAX_MARKS_PER_CALL = 20
_MAX_ERROR_CHARS = 500


@dataclass(frozen=True)
class Verdict:
    """The verifier's answer for one box.

    ``yes_prob`` is P(yes) calibrated from log-probabilities (yes mass / (yes + no mass)) when the
    backend gives them, else 1.0 or 0.0 for a parsed yes or no, and None when the answer is
    "unknown". ``raw`` is the model's text, kept as evidence. ``error`` says why no answer came
    (the request failed, the box could not be drawn) and is None otherwise: a failed verdict is
    asked again on the next run, while an unclear reply (``unclear``) is an answer and is kept.
    """

    answer: Answer
    yes_prob: float | None
    raw: str
    error: str | None = None

    @classmethod
    def failed(cls, error: str, raw: str = "") -> Verdict:
        return cls(answer="unknown", yes_prob=None, raw=raw, error=error)

    @classmethod
    def unclear(cls, raw: str) -> Verdict:
        """The model replied, but not with a clear yes or no (asking again would not help: the
        request runs at temperature 0)."""
        return cls(answer="unknown", yes_prob=None, raw=raw)


@dataclass
class VerifierStats:
    """Counters since the verifier was made.

    ``calls``: requests the verifier sent to its model (one per crop or marks group, plus a
    fallback request where logprobs were refused); ``retries``: extra attempts made by the
    backend's own retry logic; ``errors``: calls that failed after their retries.
    """

    calls: int = 0
    errors: int = 0
    retries: int = 0


class Verifier(Protocol):
    """What the labeling pipeline needs from a verifier backend."""

    model_id: str  # "openai:gpt-4o-mini", "transformers:/path", "moondream"
    mode: Literal["crop", "marks"]
    template_id: str
    template_hash: str  # sha256 of the template text(s) sent; part of every cache key
    stats: VerifierStats

    async def verify_boxes(
        self,
        image: Image.Image,
        xyxy: npt.NDArray[np.floating],
        questions: Sequence[str],
        on_verdict: Callable[[int, Verdict], None] | None = None,
    ) -> list[Verdict]:
        """One Verdict per row of ``xyxy``, each also passed to ``on_verdict(row, verdict)`` as
        soon as it is known; never raises for backend, network or parse failures."""
        ...

    async def aclose(self) -> None:
        """Release clients, connections or models the verifier owns."""
        ...


@dataclass(frozen=True)
class Completion:
    """One model reply: its text; where the backend scored the first answer token, P(yes); where
    it gives log-probabilities, every generated token with its top alternatives (marks mode reads
    each box's P(yes) from them)."""

    text: str
    yes_prob: float | None = None
    tokens: tuple[ScoredToken, ...] = ()


_T = TypeVar("_T")


class LoopLocal(Generic[_T]):
    """An asyncio primitive made for the running event loop (they cannot cross loops)."""

    def __init__(self, factory: Callable[[], _T]) -> None:
        self._factory = factory
        self._loop: asyncio.AbstractEventLoop | None = None
        self._value: _T | None = None

    def get(self) -> _T:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._value is None:
            self._loop, self._value = loop, self._factory()
        return self._value


def _describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text[:_MAX_ERROR_CHARS]


class VerifierBase(ABC):
    """Shared behaviour of every backend; a backend implements ``_complete`` (and ``aclose``).

    ``_complete`` may raise anything: the base class counts the failure and answers "unknown".
    """

    def __init__(
        self,
        *,
        model_id: str,
        mode: str = DEFAULT_VERIFY_MODE,
        concurrency: int = DEFAULT_CONCURRENCY,
        crop_options: CropOptions = CropOptions(),  # noqa: B008 - frozen dataclass
        marks_options: MarksOptions = MarksOptions(),  # noqa: B008 - frozen dataclass
        max_marks_per_call: int = MAX_MARKS_PER_CALL,
    ) -> None:
        if concurrency < 1:
            raise InputError(f"verifier concurrency must be at least 1, got {concurrency}")
        if max_marks_per_call < 1:
            raise InputError(f"max_marks_per_call must be at least 1, got {max_marks_per_call}")
        self.model_id = model_id
        self.mode: Mode = check_verify_mode(mode)
        self.templates: TemplateSet = template_set(self.mode)
        self.template_id = self.templates.template_id
        self.template_hash = self.templates.template_hash
        self.concurrency = concurrency
        self.crop_options = crop_options
        self.marks_options = marks_options
        self.max_marks_per_call = max_marks_per_call
        self.stats = VerifierStats()
        self._slots = LoopLocal(lambda: asyncio.Semaphore(concurrency))
        # Boxes being rendered or waiting for a slot with their payload ready. Rendering ahead of
        # the request slot keeps slots busy with requests; the bound keeps memory flat.
        self._staging = LoopLocal(lambda: asyncio.Semaphore(2 * concurrency))

    def _prepare(self, image: Image.Image) -> Any:
        """What ``_complete`` sends for a rendered image (an encoded data URL, say); runs in a
        worker thread before a request slot is taken. The default is the image itself."""
        return image

    @abstractmethod
    async def _complete(self, payload: Any, prompt: str, *, marks: int) -> Completion:
        """Ask the model ``prompt`` about ``payload`` (from ``_prepare``); ``marks`` is 0 in crop
        mode, else the number of numbered boxes drawn on the image. Raise on any failure."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook: most backends own nothing
        """Release what the backend owns; the base class owns nothing."""

    async def __aenter__(self) -> VerifierBase:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def verify_boxes(
        self,
        image: Image.Image,
        xyxy: npt.NDArray[np.floating],
        questions: Sequence[str],
        on_verdict: Callable[[int, Verdict], None] | None = None,
    ) -> list[Verdict]:
        """One Verdict per row of ``xyxy`` (pixels of ``image``), asking ``questions[i]`` of box i.

        Crop mode sends one request per box; marks mode draws the boxes that share a question,
        numbered, on the image and asks about them in one request (at most ``max_marks_per_call``
        boxes each). At most ``concurrency`` requests run at once across all calls on this
        verifier. ``on_verdict(i, verdict)`` is called as each answer arrives (a caller saves it
        there, so an interrupted run loses no answered request); what it raises stops the call.
        Raises ValueError only when ``xyxy`` and ``questions`` do not match.
        """
        report = on_verdict or _ignore_verdict
        boxes = np.asarray(xyxy, dtype=np.float64)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"xyxy must have shape (n, 4), got {boxes.shape}")
        if len(questions) != len(boxes):
            raise ValueError(f"{len(boxes)} boxes but {len(questions)} questions")
        if not len(boxes):
            return []
        image.load()  # decode lazily-loaded images once, before worker threads read them
        if self.mode == "crop":

            async def verify_crop(index: int) -> Verdict:
                verdict = await self._verify_crop(image, boxes[index], questions[index])
                report(index, verdict)
                return verdict

            return list(await asyncio.gather(*(verify_crop(i) for i in range(len(boxes)))))
        return await self._verify_marks(image, boxes, questions, report)

    async def _ask(self, payload: Any, prompt: str, *, marks: int) -> Completion | str:
        """The model's reply, or a description of the failure (counted in ``stats.errors``)."""
        async with self._slots.get():
            self.stats.calls += 1
            try:
                return await self._complete(payload, prompt, marks=marks)
            except Exception as exc:  # a verifier answers "unknown" rather than raise
                self.stats.errors += 1
                error = _describe_error(exc)
                logger.warning("verifier %s: request failed: %s", self.model_id, error)
                return error

    def _render_crop(self, image: Image.Image, box: npt.NDArray[np.float64]) -> Any:
        return self._prepare(crop_with_context(image, box, self.crop_options))

    def _render_marks(self, image: Image.Image, boxes: npt.NDArray[np.float64]) -> Any:
        labels = [str(i + 1) for i in range(len(boxes))]
        return self._prepare(draw_marks(image, boxes, labels, self.marks_options))

    async def _verify_crop(
        self, image: Image.Image, box: npt.NDArray[np.float64], question: str
    ) -> Verdict:
        async with self._staging.get():
            try:
                payload = await asyncio.to_thread(self._render_crop, image, box)
            except (ValueError, OSError) as exc:
                return Verdict.failed(f"cannot crop box: {exc}")
            reply = await self._ask(payload, self.templates.render_crop(question), marks=0)
        if isinstance(reply, str):
            return Verdict.failed(reply)
        answer = parse_yes_no(reply.text)
        if answer == "unknown":
            return Verdict.unclear(reply.text)
        yes_prob = reply.yes_prob
        if yes_prob is None or not math.isfinite(yes_prob):
            yes_prob = 1.0 if answer == "yes" else 0.0
        return Verdict(answer=answer, yes_prob=float(yes_prob), raw=reply.text)

    async def _verify_marks(
        self,
        image: Image.Image,
        boxes: npt.NDArray[np.float64],
        questions: Sequence[str],
        report: Callable[[int, Verdict], None],
    ) -> list[Verdict]:
        by_question: dict[str, list[int]] = {}
        for index, question in enumerate(questions):
            by_question.setdefault(question, []).append(index)
        chunks = [
            (question, indices[start : start + self.max_marks_per_call])
            for question, indices in by_question.items()
            for start in range(0, len(indices), self.max_marks_per_call)
        ]
        verdicts: list[Verdict | None] = [None] * len(boxes)

        async def verify_chunk(question: str, chunk: list[int]) -> None:
            answers = await self._verify_marks_chunk(image, boxes[chunk], question)
            for index, verdict in zip(chunk, answers, strict=True):
                verdicts[index] = verdict
                report(index, verdict)

        await asyncio.gather(*(verify_chunk(q, chunk) for q, chunk in chunks))
        return [v if v is not None else Verdict.failed("box was not asked") for v in verdicts]

    async def _verify_marks_chunk(
        self, image: Image.Image, boxes: npt.NDArray[np.float64], question: str
    ) -> list[Verdict]:
        count = len(boxes)
        async with self._staging.get():
            try:
                payload = await asyncio.to_thread(self._render_marks, image, boxes)
            except (ValueError, OSError) as exc:
                return [Verdict.failed(f"cannot draw marks: {exc}")] * count
            prompt = self.templates.render_marks(question, count)
            reply = await self._ask(payload, prompt, marks=count)
        if isinstance(reply, str):
            return [Verdict.failed(reply)] * count
        answers = parse_marks(reply.text, count)
        verdicts = []
        for answer, yes_prob in zip(answers, marks_yes_probs(reply.tokens, answers), strict=True):
            if answer == "unknown":
                verdicts.append(Verdict.unclear(reply.text))
            else:
                if yes_prob is None or not math.isfinite(yes_prob):
                    yes_prob = 1.0 if answer == "yes" else 0.0
                verdicts.append(Verdict(answer, yes_prob, reply.text))
        return verdicts


def _ignore_verdict(index: int, verdict: Verdict) -> None:
    pass


# --- questions and cache keys -------------------------------------------------------------------


def question_for(cls: OntologyClass) -> str | None:
    """The question the verifier asks about a box of ``cls``; None when ``verify: false``.

    An explicit ``verify:`` question wins; otherwise the default template ("Is this a person?")
    is filled with the class's first detector phrase.
    """
    if cls.verify is False:
        return None
    if cls.question is not None:
        return cls.question
    return default_question(cls.detect[0])


def _format_px(value: float) -> str:
    rounded = round(float(value), 1)
    return "nan" if math.isnan(rounded) else f"{rounded + 0.0:.1f}"  # + 0.0 folds -0.0 into 0.0


def verdict_cache_key(
    *,
    image_sha256: str,
    xyxy: Sequence[float] | npt.NDArray[np.floating],
    question: str,
    model_id: str,
    template_hash: str,
    mode: str,
    endpoint: str | None = None,
) -> str:
    """sha256 hex naming one verdict: same image bytes, box (to 0.1 px), question, model,
    templates, mode and endpoint give the same key; changing any of them gives another.

    ``endpoint`` is the normalized server URL (``VerifierIdentity.endpoint``); None leaves it out
    of the key, so backends without one keep the keys they had.
    """
    box = [_format_px(v) for v in np.asarray(xyxy, dtype=np.float64).reshape(-1)]
    if len(box) != 4:
        raise ValueError(f"xyxy must hold 4 numbers, got {len(box)}")
    payload = {
        "v": 1,
        "image_sha256": image_sha256,
        "xyxy": box,
        "question": question,
        "model_id": model_id,
        "template_hash": template_hash,
        "mode": mode,
    }
    if endpoint is not None:
        payload["endpoint"] = endpoint
    encoded = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(encoded.encode("utf-8")).hexdigest()


# --- choosing a backend -------------------------------------------------------------------------
