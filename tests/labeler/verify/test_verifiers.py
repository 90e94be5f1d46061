"""The verifier against a real OpenAI-compatible server on loopback (and a tiny local VLM)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from labeler.core.exceptions import InputError, ModelLoadError
from labeler.ontology import OntologyClass
from labeler.verify import (
    Verdict,
    check_verifier_spec,
    load_verifier,
    parse_verifier_spec,
    question_for,
    verdict_cache_key,
)
from labeler.verify.identity import verifier_identity
from labeler.verify.moondream_backend import MoondreamVerifier
from labeler.verify.openai_backend import OpenAIVerifier
from labeler.verify.render import crop_with_context, draw_marks
from labeler.verify.templates import template_set, with_article
from tests.fakes.vlm_server import FakeVLMServer, Fault, RecordedRequest, Reply

os.environ.setdefault("HF_HUB_OFFLINE", "1")

T = TypeVar("T")
RED, BLUE = (220, 20, 20), (20, 20, 220)
CAT_BOX = [60.0, 40.0, 140.0, 120.0]  # red square on a blue image
DOG_BOX = [200.0, 150.0, 260.0, 230.0]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def scene() -> Image.Image:
    image = Image.new("RGB", (320, 240), BLUE)
    ImageDraw.Draw(image).rectangle(CAT_BOX, fill=RED)
    return image


@pytest.fixture
def vlm_server() -> Iterator[Callable[..., FakeVLMServer]]:
    """Start FakeVLMServer(**options) on loopback; every one started is stopped afterwards."""
    started: list[FakeVLMServer] = []

    def start(*args: Any, **options: Any) -> FakeVLMServer:
        server = FakeVLMServer(*args, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def openai_verifier(server: FakeVLMServer, **options: Any) -> OpenAIVerifier:
    options.setdefault("retry_backoff_scale", 0.01)  # the SDK's 0.5 s, 1 s, ... become 5 ms, 10 ms
    options.setdefault("timeout_s", 5.0)
    return OpenAIVerifier("fake-vlm", url=server.base_url, **options)


async def verify(verifier: Any, boxes: list[list[float]], questions: list[str]) -> list[Verdict]:
    try:
        return await verifier.verify_boxes(scene(), np.array(boxes, dtype=np.float32), questions)
    finally:
        await verifier.aclose()


def answer_by_color(request: RecordedRequest) -> str:
    """A "model" that says yes to a red crop centre and no otherwise."""
    image = request.images()[0]
    r, _, b = image.getpixel((image.width // 2, image.height // 2))
    return "Yes." if r > b else "No."


# --- crop mode ----------------------------------------------------------------------------------


def test_crop_mode_with_logprobs_gives_calibrated_yes_prob(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    server = vlm_server(answer_by_color, confidence=0.9)
    verifier = openai_verifier(server)
    verdicts = run(verify(verifier, [CAT_BOX, DOG_BOX], ["Is this a cat?", "Is this a dog?"]))

    assert [v.answer for v in verdicts] == ["yes", "no"]
    assert verdicts[0].yes_prob == pytest.approx(0.9)
    assert verdicts[1].yes_prob == pytest.approx(0.1)
    assert verdicts[0].raw == "Yes." and verdicts[0].error is None
    assert verifier.stats.calls == 2 and verifier.stats.errors == 0
    requests = sorted(server.requests, key=lambda r: r.prompt_text)
    assert requests[0].prompt_text.startswith("Is this a cat?")
    assert "yes or no" in requests[0].prompt_text
    body = requests[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 5
    assert body["temperature"] == 0 and body["max_tokens"] <= 16
    # The image sent is an upscaled crop with context, not the whole image.
    crop = requests[0].images()[0]
    assert min(crop.size) >= 336
    assert crop.size[0] / crop.size[1] == pytest.approx(1.0, abs=0.02)
    assert crop.getpixel((crop.width // 2, crop.height // 2))[0] > 150  # red centre
    assert crop.getpixel((2, 2))[2] > 150  # blue context around it


def test_script_top_logprobs_are_normalised_and_summed(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    top = [("Yes", math.log(0.3)), (" yes", math.log(0.3)), ("NO.", math.log(0.2)), ("Hmm", -1.0)]
    server = vlm_server(lambda r: Reply("Yes", top_logprobs=top))
    verdicts = run(verify(openai_verifier(server), [CAT_BOX], ["Is this a cat?"]))
    assert verdicts[0].answer == "yes"
    assert verdicts[0].yes_prob == pytest.approx(0.75)


def test_crop_mode_without_logprobs_uses_the_parsed_answer(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    server = vlm_server(answer_by_color, logprobs=False)
    verdicts = run(verify(openai_verifier(server), [CAT_BOX, DOG_BOX], ["Is this a cat?"] * 2))
    assert [(v.answer, v.yes_prob) for v in verdicts] == [("yes", 1.0), ("no", 0.0)]


def test_refused_logprobs_are_dropped_once_and_remembered(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    server = vlm_server(answer_by_color, reject_logprobs=True)
    verifier = openai_verifier(server, concurrency=1)
    verdicts = run(verify(verifier, [CAT_BOX, DOG_BOX, CAT_BOX], ["Is this a cat?"] * 3))

    assert [(v.answer, v.yes_prob) for v in verdicts] == [("yes", 1.0), ("no", 0.0), ("yes", 1.0)]
    assert verifier.logprobs_supported is False
    assert [r.wants_logprobs for r in server.requests] == [True, False, False, False]
    assert [r.status for r in server.requests] == [400, 200, 200, 200]
    assert verifier.stats.calls == 4 and verifier.stats.errors == 0


def test_unreadable_box_is_unknown_and_others_still_answered(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    server = vlm_server(answer_by_color)
    boxes = [CAT_BOX, [1000.0, 1000.0, 1100.0, 1100.0], [math.nan, 0.0, 10.0, 10.0]]
    verdicts = run(verify(openai_verifier(server), boxes, ["Is this a cat?"] * 3))
    assert verdicts[0].answer == "yes"
    assert [v.answer for v in verdicts[1:]] == ["unknown", "unknown"]
    assert all("cannot crop" in (v.error or "") for v in verdicts[1:])
    assert len(server.requests) == 1


def test_no_boxes_makes_no_calls_and_mismatch_is_a_bug(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    server = vlm_server()
    verifier = openai_verifier(server)
    assert run(verifier.verify_boxes(scene(), np.zeros((0, 4), np.float32), [])) == []
    with pytest.raises(ValueError, match="2 boxes but 1 questions"):
        run(verifier.verify_boxes(scene(), np.array([CAT_BOX, DOG_BOX]), ["q"]))
    with pytest.raises(ValueError, match="shape"):
        run(verifier.verify_boxes(scene(), np.array([1.0, 2.0, 3.0]), ["q"]))
    assert server.requests == []


# --- marks mode ---------------------------------------------------------------------------------


def test_marks_mode_asks_once_per_question_and_maps_numbers_to_boxes(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    def script(request: RecordedRequest) -> str:
        if "cat" in request.prompt_text:
            return '```json\n{"1": "yes", "2": "no"}\n```'
        return '{"2": "yes", "1": "no"}'

    server = vlm_server(script)
    verifier = openai_verifier(server, mode="marks")
    boxes = [CAT_BOX, DOG_BOX, DOG_BOX, CAT_BOX]
    questions = ["Is this a cat?", "Is this a dog?", "Is this a cat?", "Is this a dog?"]
    verdicts = run(verify(verifier, boxes, questions))

    # cat question: box 0 is mark 1 (yes), box 2 is mark 2 (no); dog question: box 1 no, box 3 yes
    assert [v.answer for v in verdicts] == ["yes", "no", "no", "yes"]
    # Each box's P(yes) comes from its own answer token (the server's confidence is 0.9).
    assert [v.yes_prob for v in verdicts] == pytest.approx([0.9, 0.1, 0.1, 0.9])
    assert len(server.requests) == 2 and verifier.stats.calls == 2
    assert verifier.template_id == "marks-v1"
    request = next(r for r in server.requests if "cat" in r.prompt_text)
    assert "2 numbered boxes" in request.prompt_text
    assert request.wants_logprobs
    marked = request.images()[0]
    assert min(marked.size) >= 512  # upscaled whole image, not a crop
    scale = marked.width / 320
    # The outline of mark 1 is drawn in the first palette colour on the cat box's bottom edge.
    edge = marked.getpixel((round(100 * scale), round(120 * scale) - 1))
    assert edge[1] < 60 and edge[0] > 180


def test_marks_mode_scores_each_box_from_its_own_answer_token(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    reply = Reply('{"1": "yes", "2": "no", "3": "yes"}', confidences=[0.8, 0.7, 0.55])
    server = vlm_server(lambda r: reply)
    verdicts = run(verify(openai_verifier(server, mode="marks"), [CAT_BOX] * 3, ["q"] * 3))
    assert [v.answer for v in verdicts] == ["yes", "no", "yes"]
    assert [v.yes_prob for v in verdicts] == pytest.approx([0.8, 0.3, 0.55])


def test_marks_mode_without_logprobs_uses_the_parsed_answers(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    for options in ({"logprobs": False}, {"reject_logprobs": True}):
        server = vlm_server(lambda r: '{"1": "yes", "2": "no"}', **options)
        verifier = openai_verifier(server, mode="marks")
        verdicts = run(verify(verifier, [CAT_BOX, DOG_BOX], ["q", "q"]))
        assert [(v.answer, v.yes_prob) for v in verdicts] == [("yes", 1.0), ("no", 0.0)], options


def test_marks_mode_chunks_at_twenty_boxes(vlm_server: Callable[..., FakeVLMServer]) -> None:
    def script(request: RecordedRequest) -> str:
        count = int(request.prompt_text.split("shows ")[1].split(" numbered")[0])
        return "\n".join(f"{i}: {'yes' if i % 2 else 'no'}" for i in range(1, count + 1))

    server = vlm_server(script)
    verifier = openai_verifier(server, mode="marks")
    boxes = [[float(i), 10.0, i + 30.0, 60.0] for i in range(45)]
    verdicts = run(verify(verifier, boxes, ["Is this a cat?"] * 45))
    assert len(server.requests) == 3
    assert sorted(int(r.prompt_text.split("shows ")[1].split()[0]) for r in server.requests) == [
        5,
        20,
        20,
    ]
    expected = ["yes" if (i % 20) % 2 == 0 else "no" for i in range(45)]
    assert [v.answer for v in verdicts] == expected


def test_marks_mode_missing_entries_are_unknown(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server(lambda r: '{"1": "yes", "3": "no"}')
    verdicts = run(verify(openai_verifier(server, mode="marks"), [CAT_BOX] * 3, ["q"] * 3))
    assert [v.answer for v in verdicts] == ["yes", "unknown", "no"]
    # An answer that leaves a box out is an unclear answer, kept (error None), not a failure.
    assert (verdicts[1].yes_prob, verdicts[1].error) == (None, None)
    assert verdicts[1].raw == '{"1": "yes", "3": "no"}'


def test_draw_marks_labels_every_box_in_bounds() -> None:
    image = Image.new("RGB", (100, 80), (0, 0, 0))
    marked = draw_marks(image, np.array([[0, 0, 20, 20], [90, 70, 120, 95]]), ["1", "2"])
    assert marked.size == (640, 512)  # short side upscaled to 512
    assert image.getpixel((0, 0)) == (0, 0, 0)  # the input is not drawn on
    assert marked.getbbox() is not None
    with pytest.raises(ValueError, match="labels"):
        draw_marks(image, np.array([[0, 0, 20, 20]]), ["1", "2"])


@pytest.mark.parametrize(
    ("box", "image_wh", "expected_size"),
    [
        ([10, 10, 50, 60], (400, 300), (336, 409)),  # padded, clipped at the top-left, upscaled
        ([0, 0, 400, 300], (400, 300), (448, 336)),  # the whole image: no padding room
        ([100, 100, 100, 100], (400, 300), (336, 336)),  # zero-size box widened to 1 px
        ([0, 0, 4000, 40], (4000, 300), (1024, 13)),  # long side capped before short reaches 336
        ([50, 60, 10, 10], (400, 300), (336, 409)),  # corners given in the wrong order
    ],
)
def test_crop_with_context_sizes(
    box: list[float], image_wh: tuple[int, int], expected_size: tuple[int, int]
) -> None:
    assert crop_with_context(Image.new("RGB", image_wh), box).size == expected_size


# --- retries, timeouts, failures ----------------------------------------------------------------


def test_429_with_retry_after_waits_then_succeeds(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server(faults=[Fault.rate_limit(retry_after_s=0.4)])
    verifier = openai_verifier(server, retry_backoff_scale=0.001)
    verdicts = run(verify(verifier, [CAT_BOX], ["Is this a cat?"]))

    assert verdicts[0].answer == "yes" and verdicts[0].error is None
    first, second = server.requests
    assert (first.status, second.status) == (429, 200)
    # The wait is the server's Retry-After, not the (shortened) exponential backoff.
    assert second.received_at - first.received_at >= 0.38
    assert second.headers["x-stainless-retry-count"] == "1"
    assert verifier.stats.retries == 1 and verifier.stats.calls == 1 and verifier.stats.errors == 0


def test_500_then_success(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server(faults=[Fault.server_error(), Fault.server_error()])
    verifier = openai_verifier(server)
    verdicts = run(verify(verifier, [CAT_BOX], ["Is this a cat?"]))
    assert verdicts[0].answer == "yes"
    assert [r.status for r in server.requests] == [500, 500, 200]
    assert verifier.stats.retries == 2


def test_timeout_is_retried(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server(faults=[Fault.hang(hang_s=10.0)])
    verifier = openai_verifier(server, timeout_s=0.5)
    start = time.monotonic()
    verdicts = run(verify(verifier, [CAT_BOX], ["Is this a cat?"]))
    assert verdicts[0].answer == "yes"
    assert 0.5 <= time.monotonic() - start < 5.0
    assert len(server.requests) == 2 and server.requests[1].status == 200
    assert verifier.stats.retries == 1


@pytest.mark.parametrize(
    ("fault", "error_part"),
    [
        (Fault.server_error(), "500"),
        (Fault.rate_limit(retry_after_s=0.01), "429"),
        (Fault.bad_request(), "400"),
        (Fault.hang(hang_s=10.0), "Timeout"),
    ],
    ids=["500", "429", "400", "hang"],
)
def test_persistent_failure_is_unknown_not_an_exception(
    vlm_server: Callable[..., FakeVLMServer], fault: Fault, error_part: str
) -> None:
    server = vlm_server(fault_rate=1.0, fault=fault)
    verifier = openai_verifier(server, max_retries=2, timeout_s=0.3)
    verdicts = run(verify(verifier, [CAT_BOX, DOG_BOX], ["Is this a cat?"] * 2))

    assert all(v.answer == "unknown" and v.yes_prob is None for v in verdicts)
    assert all(error_part in (v.error or "") for v in verdicts)
    assert verifier.stats.errors == 2
    # 400 is not retried (after the logprobs fallback); the others are, twice each.
    expected_requests = 2 * 2 if fault.kind == "bad_request" else 2 * 3
    assert len(server.requests) == expected_requests


def test_garbage_replies_are_unknown(vlm_server: Callable[..., FakeVLMServer]) -> None:
    # Text that answers nothing is an unclear answer: kept as evidence, not retried (error None).
    server = vlm_server(fault_rate=1.0, fault=Fault.garbage())
    (verdict,) = run(verify(openai_verifier(server), [CAT_BOX], ["Is this a cat?"]))
    assert (verdict.answer, verdict.yes_prob, verdict.error) == ("unknown", None, None)
    assert verdict.raw
    # A body that is not a chat completion at all is a failed request: asked again next run.
    server = vlm_server(fault_rate=1.0, fault=Fault.invalid_json())
    (verdict,) = run(verify(openai_verifier(server), [CAT_BOX], ["Is this a cat?"]))
    assert (verdict.answer, verdict.yes_prob) == ("unknown", None)
    assert "JSONDecodeError" in (verdict.error or "")


def test_unreachable_server_is_unknown(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server()
    url = server.base_url
    server.stop()
    verifier = OpenAIVerifier("m", url=url, max_retries=1, retry_backoff_scale=0.01)
    verdicts = run(verify(verifier, [CAT_BOX], ["q"]))
    assert verdicts[0].answer == "unknown" and "Connection" in (verdicts[0].error or "")


# --- concurrency --------------------------------------------------------------------------------


def test_concurrency_bound_is_shared_across_calls(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server(latency_s=0.15)
    verifier = openai_verifier(server, concurrency=4)

    async def two_images() -> list[list[Verdict]]:
        boxes = np.array([CAT_BOX] * 10, dtype=np.float32)
        try:
            return list(
                await asyncio.gather(
                    verifier.verify_boxes(scene(), boxes, ["q"] * 10),
                    verifier.verify_boxes(scene(), boxes, ["q"] * 10),
                )
            )
        finally:
            await verifier.aclose()

    start = time.monotonic()
    results = run(two_images())
    elapsed = time.monotonic() - start
    assert all(v.answer == "yes" for verdicts in results for v in verdicts)
    assert server.peak_in_flight == 4
    assert elapsed >= 5 * 0.15  # 20 requests, 4 at a time


def test_server_side_queue_is_measured(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server(latency_s=0.1, max_concurrency=2)
    verdicts = run(verify(openai_verifier(server, concurrency=6), [CAT_BOX] * 6, ["q"] * 6))
    assert all(v.answer == "yes" for v in verdicts)
    assert server.peak_in_flight == 6 and server.peak_processing == 2


def test_injected_http_client_is_used_and_left_open(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    server = vlm_server()
    seen: list[str] = []

    async def main() -> None:
        async def hook(request: httpx.Request) -> None:
            seen.append(request.url.path)

        async with httpx.AsyncClient(event_hooks={"request": [hook]}) as client:
            verifier = load_verifier("openai:fake-vlm", url=server.base_url, http_client=client)
            assert verifier is not None
            await verifier.verify_boxes(scene(), np.array([CAT_BOX]), ["q"])
            await verifier.aclose()
            assert not client.is_closed

    run(main())
    assert seen == ["/v1/chat/completions"]


# --- configuration ------------------------------------------------------------------------------


def test_missing_api_key_for_openai_is_an_input_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(InputError, match="OPENAI_API_KEY"):
        load_verifier("openai:gpt-4o-mini")


def test_openai_env_is_honoured(
    vlm_server: Callable[..., FakeVLMServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = vlm_server()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    verifier = load_verifier("openai:gpt-4o-mini")
    assert verifier is not None and verifier.model_id == "openai:gpt-4o-mini"
    run(verify(verifier, [CAT_BOX], ["q"]))
    assert server.requests[0].headers["authorization"] == "Bearer sk-test"
    assert server.requests[0].body["model"] == "gpt-4o-mini"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("openai:gpt-4o-mini", ("openai", "gpt-4o-mini")),
        (" OpenAI : gpt-4o ", ("openai", "gpt-4o")),
        ("none", ("none", None)),
        ("None", ("none", None)),
        ("", ("none", None)),
        ("moondream", ("moondream", None)),
        ("moondream:moondream3-preview", ("moondream", "moondream3-preview")),
        ("transformers:/models/a:b", ("transformers", "/models/a:b")),
        (
            "transformers:HuggingFaceTB/SmolVLM-256M-Instruct",
            ("transformers", "HuggingFaceTB/SmolVLM-256M-Instruct"),
        ),
    ],
)
def test_parse_verifier_spec(spec: str, expected: tuple[str, str | None]) -> None:
    assert parse_verifier_spec(spec) == expected
    assert check_verifier_spec(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("gpt-4o-mini", "unknown verifier"),
        ("anthropic:claude", "unknown verifier"),
        ("openai", "needs a model name"),
        ("openai:", "needs a model name"),
        ("transformers", "needs a model name"),
    ],
)
def test_bad_verifier_spec(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as raised:
        check_verifier_spec(spec)
    assert "openai:MODEL" in str(raised.value)  # the message lists the valid specs
    with pytest.raises(InputError):
        load_verifier(spec)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "grid"}, "verify mode"),
        ({"concurrency": 0}, "concurrency"),
        ({"timeout_s": 0}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
    ],
)
def test_bad_verifier_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        load_verifier("openai:m", url="http://127.0.0.1:9/v1", **options)


def test_none_spec_loads_nothing() -> None:
    assert load_verifier("none") is None


# --- questions and cache keys -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "expected"),
    [
        (OntologyClass(name="person", detect=("person",)), "Is this a person?"),
        (OntologyClass(name="apple", detect=("apple", "pear")), "Is this an apple?"),
        (OntologyClass(name="u", detect=("umbrella",)), "Is this an umbrella?"),
        (OntologyClass(name="uni", detect=("unicycle",)), "Is this a unicycle?"),
        (OntologyClass(name="h", detect=("hour glass",)), "Is this an hour glass?"),
        (OntologyClass(name="car", detect=("a red car",)), "Is this a red car?"),
        (
            OntologyClass(name="g", detect=("person",), verify="Is this person wearing glasses?"),
            "Is this person wearing glasses?",
        ),
        (OntologyClass(name="f", detect=("forklift",), verify=False), None),
    ],
)
def test_question_for(cls: OntologyClass, expected: str | None) -> None:
    assert question_for(cls) == expected


def test_with_article_keeps_existing_articles() -> None:
    assert with_article("the moon") == "the moon"
    assert with_article("An owl") == "An owl"
    assert with_article("owl") == "an owl"


KEY_ARGS: dict[str, Any] = {
    "image_sha256": "ab" * 32,
    "xyxy": [10.0, 20.0, 30.0, 40.0],
    "question": "Is this a cat?",
    "model_id": "openai:gpt-4o-mini",
    "template_hash": template_set("crop").template_hash,
    "mode": "crop",
}


def test_cache_key_is_stable() -> None:
    key = verdict_cache_key(**KEY_ARGS)
    assert len(key) == 64 and int(key, 16) >= 0
    assert verdict_cache_key(**KEY_ARGS) == key
    # Sub-0.05 px jitter, numpy input and float32 rounding do not change the key.
    assert verdict_cache_key(**{**KEY_ARGS, "xyxy": [10.01, 19.97, 30.04, 40.0]}) == key
    assert verdict_cache_key(**{**KEY_ARGS, "xyxy": np.array([10, 20, 30, 40], np.float32)}) == key
    assert verdict_cache_key(**{**KEY_ARGS, "xyxy": [0.0, 0, 1, 1]}) == verdict_cache_key(
        **{**KEY_ARGS, "xyxy": [-0.0, -0.01, 1, 1]}
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("image_sha256", "cd" * 32),
        ("xyxy", [10.0, 20.0, 30.0, 40.2]),
        ("question", "Is this a dog?"),
        ("model_id", "openai:gpt-4o"),
        ("template_hash", template_set("marks").template_hash),
        ("mode", "marks"),
    ],
)
def test_cache_key_changes_with_each_input(field: str, value: Any) -> None:
    assert verdict_cache_key(**{**KEY_ARGS, field: value}) != verdict_cache_key(**KEY_ARGS)


def test_cache_key_changes_with_the_endpoint() -> None:
    key = verdict_cache_key(**KEY_ARGS)
    assert verdict_cache_key(**KEY_ARGS, endpoint=None) == key
    a = verdict_cache_key(**KEY_ARGS, endpoint="http://gpu-a:8000/v1")
    b = verdict_cache_key(**KEY_ARGS, endpoint="http://gpu-b:8000/v1")
    assert len({key, a, b}) == 3


def test_verifier_identity_names_the_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    spec = "openai:qwen2-vl"

    def identity(url: str | None) -> Any:
        return verifier_identity(spec, mode="crop", url=url)

    a, b = identity("http://gpu-a:8000/v1"), identity("http://gpu-b:8000/v1")
    assert a.model_id == b.model_id == spec
    assert a != b and a.endpoint != b.endpoint
    assert identity("http://gpu-a:8000/v1") == a
    # Spelling that names the same server gives the same identity; credentials never enter it.
    for same in (
        "HTTP://GPU-A:8000/v1/",
        "http://user:sk-secret@gpu-a:8000/v1?api-key=sk-secret#frag",
    ):
        assert identity(same) == a
    assert a.endpoint == "http://gpu-a:8000/v1"
    assert identity("https://example.com:443/v1").endpoint == "https://example.com/v1"
    assert identity("http://gpu-a:8001/v1") != a
    assert identity("http://gpu-a:8000/v2") != a
    # Without a URL the backend's own default applies: OPENAI_BASE_URL, then OpenAI's API.
    assert identity(None).endpoint == "https://api.openai.com/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gpu-b:8000/v1")
    assert identity(None) == b
    # Backends that take no endpoint keep the identity they had.
    local = verifier_identity("transformers:/models/smolvlm", mode="crop", url="http://x/v1")
    assert local.endpoint is None
    # Moondream Cloud and a local Moondream Station may run different model versions.
    cloud = verifier_identity("moondream", mode="crop")
    station = verifier_identity("moondream", mode="crop", url="http://LOCALHOST:2020/v1/")
    assert cloud.endpoint == "https://api.moondream.ai/v1"
    assert station.endpoint == "http://localhost:2020/v1"


def test_template_provenance() -> None:
    crop, marks = template_set("crop"), template_set("marks")
    assert (crop.template_id, marks.template_id) == ("crop-v1", "marks-v1")
    assert crop.template_hash != marks.template_hash and len(crop.template_hash) == 64
    assert "$" not in crop.render_crop("Is this a cat?")
    rendered = marks.render_marks("Is this a cat?", 3)
    assert "$" not in rendered and "1, 2, 3" in rendered and '{"1": "yes", "2": "no"}' in rendered


# --- moondream ----------------------------------------------------------------------------------


def moondream_verifier(server: FakeVLMServer, **options: Any) -> MoondreamVerifier:
    options.setdefault("retry_base_delay_s", 0.01)
    return MoondreamVerifier(url=server.base_url, **options)


def test_moondream_queries_the_crop(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server(answer_by_color)
    verifier = moondream_verifier(server)
    verdicts = run(verify(verifier, [CAT_BOX, DOG_BOX], ["Is this a cat?"] * 2))
    assert [(v.answer, v.yes_prob) for v in verdicts] == [("yes", 1.0), ("no", 0.0)]
    assert verifier.model_id == "moondream"
    assert {r.path for r in server.requests} == {"/v1/query"}
    assert server.requests[0].prompt_text.startswith("Is this a cat?")
    assert min(server.requests[0].images()[0].size) >= 336


def test_moondream_retries_and_fails_softly(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server(faults=[Fault.rate_limit(retry_after_s=0.2), Fault.server_error()])
    verifier = moondream_verifier(server)
    verdicts = run(verify(verifier, [CAT_BOX], ["q"]))
    assert verdicts[0].answer == "yes"
    assert [r.status for r in server.requests] == [429, 500, 200]
    assert server.requests[1].received_at - server.requests[0].received_at >= 0.18
    assert verifier.stats.retries == 2

    failing = vlm_server(fault_rate=1.0, fault=Fault.rate_limit(retry_after_s=0.01))
    verifier = moondream_verifier(failing, max_retries=1)
    verdicts = run(verify(verifier, [CAT_BOX], ["q"]))
    assert verdicts[0].answer == "unknown" and "429" in (verdicts[0].error or "")
    assert "VerifierRateLimited" in (verdicts[0].error or "")

    garbage = vlm_server(fault_rate=1.0, fault=Fault.garbage())
    verdicts = run(verify(moondream_verifier(garbage), [CAT_BOX], ["q"]))
    assert verdicts[0].answer == "unknown"


def test_moondream_timeout(vlm_server: Callable[..., FakeVLMServer]) -> None:
    server = vlm_server(faults=[Fault.hang(hang_s=1.0)])
    verdicts = run(verify(moondream_verifier(server, timeout_s=0.3), [CAT_BOX], ["q"]))
    assert verdicts[0].answer == "yes"
    assert len(server.requests) == 2


def test_moondream_hung_calls_cost_a_timeout_not_a_thread(
    vlm_server: Callable[..., FakeVLMServer],
) -> None:
    """The ``moondream`` package's client blocks a thread per call, without a timeout: a server
    that stopped answering held every thread of the pool, and later calls (and crop rendering)
    waited for one. Here two threads and four hung calls must not matter."""
    server = vlm_server(faults=[Fault.hang(hang_s=60.0)] * 4)
    verifier = moondream_verifier(server, timeout_s=0.3, max_retries=1)

    async def on_two_threads() -> list[Verdict]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2))
        return await verify(verifier, [CAT_BOX] * 4, ["q"] * 4)

    started = time.monotonic()
    verdicts = run(on_two_threads())

    assert [v.answer for v in verdicts] == ["yes"] * 4  # each retried once, after 0.3 s
    assert time.monotonic() - started < 5
    assert len(server.requests) == 8


def test_moondream_cloud_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MOONDREAM_API_KEY", raising=False)
    with pytest.raises(InputError, match="MOONDREAM_API_KEY"):
        load_verifier("moondream")


# --- transformers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vlm_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from labeler.verify.tiny_vlm import build_tiny_vlm

    root = tmp_path_factory.mktemp("tiny_vlm")
    return {
        "yes": build_tiny_vlm(root / "yes", yes_prob=0.8),
        "no": build_tiny_vlm(root / "no", yes_prob=0.3),
        "random": build_tiny_vlm(root / "random"),
    }


def test_transformers_tiny_vlm_answers_with_calibrated_yes_prob(
    tiny_vlm_dirs: dict[str, Path],
) -> None:
    verifier = load_verifier(f"transformers:{tiny_vlm_dirs['yes']}", device="cpu")
    assert verifier is not None and verifier.model_id == f"transformers:{tiny_vlm_dirs['yes']}"
    verdicts = run(verify(verifier, [CAT_BOX, DOG_BOX], ["Is this a cat?"] * 2))
    assert [v.answer for v in verdicts] == ["yes", "yes"]
    assert [v.yes_prob for v in verdicts] == [pytest.approx(0.8, abs=1e-3)] * 2
    assert verdicts[0].raw.split()[0] == "yes"

    verifier = load_verifier(f"transformers:{tiny_vlm_dirs['no']}", device="cpu")
    verdicts = run(verify(verifier, [CAT_BOX], ["Is this a cat?"]))
    assert verdicts[0].answer == "no"
    assert verdicts[0].yes_prob == pytest.approx(0.3, abs=1e-3)


def test_transformers_marks_mode_reports_every_token_with_its_alternatives(
    tiny_vlm_dirs: dict[str, Path],
) -> None:
    from labeler.verify.parse import yes_prob_from_top_logprobs

    verifier = load_verifier(f"transformers:{tiny_vlm_dirs['yes']}", device="cpu", mode="marks")
    completion = verifier._generate(scene(), "Is this a cat?", 2)  # type: ignore[union-attr]
    # The steered model says "yes" at every step; each step's alternatives give P(yes) = 0.8.
    assert len(completion.tokens) > 2
    assert "".join(text for text, _ in completion.tokens).startswith("yesyes")
    assert [yes_prob_from_top_logprobs(top) for _, top in completion.tokens] == [
        pytest.approx(0.8, abs=1e-3)
    ] * len(completion.tokens)


def test_transformers_random_vlm_does_not_crash(tiny_vlm_dirs: dict[str, Path]) -> None:
    verifier = load_verifier(f"transformers:{tiny_vlm_dirs['random']}", device="cpu", mode="marks")
    verdicts = run(verify(verifier, [CAT_BOX, DOG_BOX], ["Is this a cat?"] * 2))
    assert len(verdicts) == 2 and all(v.answer in {"yes", "no", "unknown"} for v in verdicts)
    assert verifier.stats.calls == 1 and verifier.stats.errors == 0


@pytest.mark.parametrize("where", ["missing-folder", "hub-id", "not-a-model"])
def test_transformers_load_errors_say_what_to_do(tmp_path: Path, where: str) -> None:
    if where == "missing-folder":
        source, hint = str(tmp_path / "nope"), "huggingface-cli download"
    elif where == "hub-id":
        source, hint = "someone/some-vlm-that-is-not-here", "HF_HUB_OFFLINE"
    else:
        (tmp_path / "config.json").write_text("{}")
        source, hint = str(tmp_path), "save_pretrained"
    with pytest.raises(ModelLoadError, match="cannot load the verifier model") as raised:
        load_verifier(f"transformers:{source}", device="cpu")
    assert source in str(raised.value) and hint in str(raised.value)
