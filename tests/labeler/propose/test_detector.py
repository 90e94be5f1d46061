"""PROPOSE: tiny random checkpoints saved to disk and loaded through load_detector.

Random weights say nothing about accuracy, so correctness is checked where it lives: the span,
class and NMS helpers on hand-made scores, the box decoding against transformers' own
post-processing, and the shape/bounds/threshold/batching contracts on real forward passes.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

# No network in tests: huggingface_hub reads these once, at import.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig

from labeler.core.detections import Detections
from labeler.core.exceptions import InputError, ModelLoadError
from labeler.demo.tiny_models import (
    build_tiny_grounding_dino,
    build_tiny_omdet_turbo,
    build_tiny_owlv2,
)
from labeler.ontology import Ontology, parse_ontology
from labeler.propose.detector import (
    Detector,
    DetectorOptions,
    _best_phrase_classes,
    _decode_grounding_dino,
    _decode_omdet_turbo,
    _decode_owlv2,
    _encode_text_grounding_dino,
    _encode_text_omdet_turbo,
    _grounding_phrase,
    _select_detections,
    _span_scores,
    _TextChunk,
    load_detector,
)

ALL_PASS = {"box_threshold": 0.0, "text_threshold": 0.0}
ONTOLOGY = Ontology.from_mapping(
    {"car": ["car", "red automobile"], "dog": "zebra dog", "person": "person"}
)


@pytest.fixture(scope="module")
def gdino_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_grounding_dino(tmp_path_factory.mktemp("gdino") / "model")


@pytest.fixture(scope="module")
def owl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_owlv2(tmp_path_factory.mktemp("owlv2") / "model")


@pytest.fixture(scope="module")
def omdet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_omdet_turbo(tmp_path_factory.mktemp("omdet") / "model")


def random_images(sizes_wh: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes_wh]


@contextmanager
def count_forwards(detector: Detector) -> Iterator[list[int]]:
    """Counts calls of the top-level model (one per forward pass)."""
    calls = [0]
    handle = detector.model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def assert_valid(results: list[Detections], images: list[Image.Image], options: DetectorOptions):
    assert len(results) == len(images)
    for dets, image in zip(results, images, strict=True):
        width, height = image.size
        assert dets.metadata["image_wh"] == (width, height)
        assert dets.xyxy.dtype == np.float32 and dets.xyxy.shape == (len(dets), 4)
        assert dets.data["box_score"].shape == (len(dets),)
        assert len(dets) <= options.max_det
        assert np.all(dets.xyxy[:, [0, 2]] >= 0) and np.all(dets.xyxy[:, [0, 2]] <= width)
        assert np.all(dets.xyxy[:, [1, 3]] >= 0) and np.all(dets.xyxy[:, [1, 3]] <= height)
        assert np.all(dets.xyxy[:, 2] > dets.xyxy[:, 0]) and np.all(
            dets.xyxy[:, 3] > dets.xyxy[:, 1]
        )
        assert np.all((dets.class_id >= 0) & (dets.class_id < len(ONTOLOGY.classes)))
        assert np.all(np.diff(dets.confidence) <= 0), "sorted by confidence, best first"
        assert np.all(dets.confidence >= options.text_threshold)
        assert np.all(dets.data["box_score"] >= options.box_threshold)


# --- hand-made scores: where the real correctness lives ----------------------------------------


def test_span_scores_are_span_means_and_box_score_is_max_over_phrase_tokens() -> None:
    # tokens: [CLS] red car . dog . [SEP]  -> phrase 0 = tokens 1-2, phrase 1 = token 4
    member = torch.tensor([[0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0]], dtype=torch.float32)
    positive_map = member / member.sum(dim=1, keepdim=True)
    token_probs = torch.tensor([[[0.99, 0.8, 0.2, 0.97, 0.1, 0.9, 0.99]]])  # (B=1, N=1, T=7)
    phrase_scores, box_scores = _span_scores(token_probs, positive_map)
    torch.testing.assert_close(phrase_scores, torch.tensor([[[0.5, 0.1]]]))
    # The separators and [CLS]/[SEP] score high here but are no phrase's tokens.
    torch.testing.assert_close(box_scores, torch.tensor([[0.8]]))


def classes_of_phrases(class_ids: list[list[int]], num_classes: int) -> torch.Tensor:
    """``(U, C)`` bool: for each distinct phrase, the classes that detect it."""
    phrase_classes = torch.zeros(len(class_ids), num_classes, dtype=torch.bool)
    for phrase_id, ids in enumerate(class_ids):
        phrase_classes[phrase_id, ids] = True
    return phrase_classes


def test_a_box_takes_its_best_phrase_whose_score_is_the_class_score() -> None:
    phrase_scores = torch.tensor([[[0.2, 0.7, 0.4], [0.9, 0.1, 0.95]]])  # (1, 2 boxes, 3 phrases)
    phrase_classes = classes_of_phrases([[0], [0], [1]], num_classes=3)  # car, auto -> 0; dog -> 1
    confidence, class_mask = _best_phrase_classes(
        phrase_scores, torch.tensor([0, 1, 2]), phrase_classes
    )
    torch.testing.assert_close(confidence, torch.tensor([[0.7, 0.95]]))
    assert class_mask.tolist() == [[[True, False, False], [False, True, False]]]


def test_a_phrase_shared_by_classes_marks_all_of_them() -> None:
    # This chunk holds distinct phrases 2 and 3 (a Grounding DINO prompt split in two); phrase 3
    # ("person") is detected by classes 1 (glasses_person) and 2 (person).
    phrase_scores = torch.tensor([[[0.6, 0.3], [0.2, 0.8], [0.5, 0.5]]])
    phrase_classes = classes_of_phrases([[0], [0], [3], [1, 2]], num_classes=4)
    confidence, class_mask = _best_phrase_classes(
        phrase_scores, torch.tensor([2, 3]), phrase_classes
    )
    torch.testing.assert_close(confidence, torch.tensor([[0.6, 0.8, 0.5]]))
    assert class_mask.int().tolist() == [[[0, 0, 0, 1], [0, 1, 1, 0], [0, 0, 0, 1]]]  # tie: first


def select(
    phrase_scores: list[list[float]],
    xyxy: list[list[float]],
    phrase_class_ids: tuple[list[int], ...] = ([0], [0], [1]),
    **options: float,
):
    """Run the shared class/threshold/NMS step on one 100x100 image with phrases car, auto, dog
    (classes car: car, auto; dog: dog, unless ``phrase_class_ids`` says otherwise)."""
    scores = torch.tensor([phrase_scores])
    num_classes = max(max(ids) for ids in phrase_class_ids) + 1
    phrase_classes = classes_of_phrases(list(phrase_class_ids), num_classes)
    confidence, class_mask = _best_phrase_classes(
        scores, torch.arange(len(phrase_class_ids)), phrase_classes
    )
    return _select_detections(
        torch.tensor([xyxy]),
        confidence,
        class_mask,
        scores.amax(dim=-1),
        torch.tensor([[100.0, 100.0]]),
        DetectorOptions(**{"box_threshold": 0.3, "text_threshold": 0.3, **options}),
    )[0]


def test_nms_merges_a_synonym_duplicate_but_keeps_other_classes() -> None:
    dets = select(
        [[0.9, 0.1, 0.0], [0.1, 0.8, 0.0], [0.0, 0.0, 0.7], [0.0, 0.05, 0.6]],
        [[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]],
    )
    # box 1 ("automobile") duplicates box 0 ("car"): one class, so NMS drops it; box 2 overlaps
    # box 0 as much but is a dog, so class-aware NMS keeps it.
    np.testing.assert_allclose(dets.xyxy, [[0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60]])
    np.testing.assert_array_equal(dets.class_id, [0, 1, 1])
    np.testing.assert_allclose(dets.confidence, [0.9, 0.7, 0.6])
    np.testing.assert_allclose(dets.data["box_score"], [0.9, 0.7, 0.6])


def test_a_shared_phrase_proposes_each_box_once_per_class_and_nms_stays_per_class() -> None:
    # "dog" is detected by classes 1 and 2 (say dog and a dog_with_collar attribute class).
    shared = ([0], [0], [1, 2])
    dets = select(
        [[0.9, 0.1, 0.0], [0.0, 0.1, 0.8], [0.0, 0.0, 0.7], [0.0, 0.0, 0.6]],
        [[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 60, 60]],
        shared,
    )
    # Box 1 (a dog) overlaps box 0 (a car): other classes, both kept. Box 2 duplicates box 1:
    # NMS drops it in class 1 and in class 2. Each class's copy of a box never suppresses the
    # other's. Copies keep the box's scores and come in class order.
    np.testing.assert_allclose(dets.xyxy, [[0, 0, 10, 10]] * 3 + [[50, 50, 60, 60]] * 2)
    np.testing.assert_array_equal(dets.class_id, [0, 1, 2, 1, 2])
    np.testing.assert_allclose(dets.confidence, [0.9, 0.8, 0.8, 0.6, 0.6])
    np.testing.assert_allclose(dets.data["box_score"], [0.9, 0.8, 0.8, 0.6, 0.6])
    # max_det counts proposals, copies included; thresholds keep or drop all copies together.
    assert select([[0.0, 0.0, 0.8]], [[0, 0, 10, 10]], shared, max_det=1).class_id.tolist() == [1]
    assert len(select([[0.0, 0.0, 0.8]], [[0, 0, 10, 10]], shared, text_threshold=0.9)) == 0


@pytest.mark.parametrize(
    ("options", "expected_confidence"),
    [
        ({}, [0.9, 0.5]),
        ({"box_threshold": 0.6}, [0.9]),  # box score 0.5 < 0.6
        ({"text_threshold": 0.95}, []),
        ({"box_threshold": 1.01}, []),
        ({"max_det": 1}, [0.9]),
        ({"nms_iou": 0.0}, [0.9]),  # any overlap suppresses: the two boxes touch 1 px wide
    ],
)
def test_thresholds_and_max_det_on_hand_made_scores(
    options: dict[str, float], expected_confidence: list[float]
) -> None:
    dets = select([[0.9, 0.0, 0.0], [0.5, 0.0, 0.0]], [[0, 0, 20, 20], [19, 0, 40, 20]], **options)
    np.testing.assert_allclose(dets.confidence, expected_confidence)


def test_boxes_are_clipped_to_the_image_and_empty_ones_dropped() -> None:
    dets = select(
        [[0.9, 0.0, 0.0], [0.8, 0.0, 0.0]], [[-10, 90, 50, 130], [120, 0, 150, 10]], nms_iou=1.0
    )
    np.testing.assert_allclose(dets.xyxy, [[0, 90, 50, 100]])  # the second lies outside


# --- Grounding DINO text encoding and box decoding ----------------------------------------------


@pytest.mark.parametrize(
    ("phrase", "cleaned"),
    [("Red Car", "red car"), ("st. bernard?", "st bernard"), ("  a  dog ", "a dog")],
)
def test_grounding_phrases_are_lowercase_without_separators(phrase: str, cleaned: str) -> None:
    assert _grounding_phrase(phrase) == cleaned


def test_phrase_token_spans_cover_exactly_each_multi_token_phrase(gdino_dir: Path) -> None:
    detector = load_detector(gdino_dir)
    phrases = ["red car", "Zebra dog", "person", "forklift operator"]
    (chunk,) = _encode_text_grounding_dino(detector.processor, detector.model.config, phrases)
    input_ids = chunk.text_inputs["input_ids"][0]
    tokenizer = detector.processor.tokenizer
    assert tokenizer.decode(input_ids) == (
        "[CLS] red car. zebra dog. person. forklift operator. [SEP]"
    )
    assert chunk.positive_map is not None
    for phrase, weights in zip(phrases, chunk.positive_map, strict=True):
        span = weights > 0
        assert tokenizer.decode(input_ids[span]) == phrase.lower()
        torch.testing.assert_close(weights[span], torch.full((int(span.sum()),), 1 / span.sum()))
    assert chunk.positive_map[1].gt(0).sum() > 2, "zebra is spelled in word pieces"


def test_too_many_phrases_are_packed_into_prompts_that_fit(gdino_dir: Path) -> None:
    detector = load_detector(gdino_dir)
    phrases = [f"zebra number {i}" for i in range(60)]  # ~13 tokens each: > 256 in total
    chunks = _encode_text_grounding_dino(detector.processor, detector.model.config, phrases)
    assert len(chunks) > 1
    assert torch.cat([c.phrase_ids for c in chunks]).tolist() == list(range(60))
    for chunk, following in itertools.pairwise(chunks):
        length = chunk.text_inputs["input_ids"].shape[1]
        assert length <= 256
        # Packed greedily: the next prompt's first phrase (+ its ".") would not have fitted.
        first = following.positive_map[0].gt(0).sum()
        assert length + first + 1 > 256
    # End to end: one forward per prompt, and every class can win.
    ontology = Ontology.from_mapping({f"class{i}": phrase for i, phrase in enumerate(phrases)})
    detector = load_detector(gdino_dir, DetectorOptions(**ALL_PASS, max_det=100))
    with count_forwards(detector) as calls:
        (dets,) = detector.propose(random_images([(64, 48)]), ontology)
    assert calls == [len(chunks)]
    assert len(dets) > 0 and dets.class_id.max() < 60


def test_a_phrase_longer_than_the_text_limit_is_named(gdino_dir: Path) -> None:
    detector = load_detector(gdino_dir)
    long_phrase = "a" + ",a" * 127  # every comma is a token: 255 tokens
    with pytest.raises(InputError, match=r"a,a,a.*tokens long"):
        detector.propose(random_images([(32, 32)]), Ontology.from_mapping({"x": long_phrase}))


def test_box_decoding_matches_transformers_post_processing(gdino_dir: Path) -> None:
    detector = load_detector(gdino_dir)
    images = random_images([(64, 48), (50, 100)])
    (chunk,) = _encode_text_grounding_dino(detector.processor, detector.model.config, ["a cat"])
    inputs = detector.processor(images=images, text=["a cat.", "a cat."], return_tensors="pt")
    with torch.inference_mode():
        outputs = detector.model(**inputs)
    sizes_hw = [(image.height, image.width) for image in images]
    expected = detector.processor.post_process_grounded_object_detection(
        outputs, threshold=-1.0, target_sizes=sizes_hw
    )
    decoded = _decode_grounding_dino(outputs, chunk, torch.tensor([[64.0, 48.0], [50.0, 100.0]]))
    for i in range(2):
        torch.testing.assert_close(decoded.xyxy_px[i], expected[i]["boxes"])


def test_hand_made_boxes_scale_to_original_pixels() -> None:
    pred_boxes = torch.tensor([[[0.5, 0.5, 0.5, 0.5]]])  # cxcywh, relative
    wh = torch.tensor([[200.0, 100.0]])
    gdino = _decode_grounding_dino(
        SimpleNamespace(logits=torch.zeros(1, 1, 256), pred_boxes=pred_boxes),
        _TextChunk({}, torch.tensor([0]), torch.tensor([[0.0, 1.0, 0.0]])),
        wh,
    )
    torch.testing.assert_close(gdino.xyxy_px, torch.tensor([[[50.0, 25.0, 150.0, 75.0]]]))
    # OWLv2 boxes are relative to the image padded to a 200x200 square.
    owl = _decode_owlv2(
        SimpleNamespace(logits=torch.zeros(1, 1, 1), pred_boxes=pred_boxes),
        _TextChunk({}, torch.tensor([0])),
        wh,
    )
    torch.testing.assert_close(owl.xyxy_px, torch.tensor([[[50.0, 50.0, 150.0, 150.0]]]))


# --- end to end through load_detector ------------------------------------------------------------


def test_grounding_dino_mixed_sizes_in_one_batch(gdino_dir: Path) -> None:
    options = DetectorOptions(**ALL_PASS, max_det=10, batch_size=8)
    detector = load_detector(gdino_dir, options)
    images = random_images([(64, 48), (50, 100), (200, 30)])
    images[1] = images[1].convert("L")  # converted to RGB on the way in
    results = detector.propose(images, ONTOLOGY)
    assert_valid(results, images, options)
    assert all(len(dets) == 10 for dets in results), "40 random queries leave more than 10"


def test_threshold_above_one_keeps_nothing_and_zero_keeps_max_det(gdino_dir: Path) -> None:
    images = random_images([(64, 48), (64, 48)])
    strict = load_detector(gdino_dir, DetectorOptions(box_threshold=1.01))
    assert [len(d) for d in strict.propose(images, ONTOLOGY)] == [0, 0]
    loose = load_detector(gdino_dir, DetectorOptions(**ALL_PASS, max_det=3))
    assert [len(d) for d in loose.propose(images, ONTOLOGY)] == [3, 3]


def test_box_threshold_applies_to_box_scores(gdino_dir: Path) -> None:
    images = random_images([(64, 48)])
    everything = load_detector(gdino_dir, DetectorOptions(**ALL_PASS)).propose(images, ONTOLOGY)
    threshold = float(np.median(everything[0].data["box_score"]))
    options = DetectorOptions(box_threshold=threshold, text_threshold=0.0)
    kept = load_detector(gdino_dir, options).propose(images, ONTOLOGY)[0]
    assert 0 < len(kept) < len(everything[0])
    assert kept.data["box_score"].min() >= threshold


@pytest.mark.parametrize(
    "ontology",
    [
        Ontology.from_mapping({"car": "car"}),
        Ontology.from_mapping({f"class{i}": [f"thing {i}", f"other {i}"] for i in range(8)}),
    ],
    ids=["1-class", "8-classes-16-phrases"],
)
def test_one_forward_per_batch_whatever_the_class_count(
    gdino_dir: Path, owl_dir: Path, ontology: Ontology
) -> None:
    images = random_images([(64, 48)] * 5)
    for path in (gdino_dir, owl_dir):
        detector = load_detector(path, DetectorOptions(batch_size=2))
        with count_forwards(detector) as calls:
            detector.propose(images, ontology)
            detector.propose(images, ontology)
        assert calls == [6], path  # 3 batches (2 + 2 + 1) per call


def test_same_phrases_grouped_differently_are_not_confused(gdino_dir: Path) -> None:
    detector = load_detector(gdino_dir, DetectorOptions(**ALL_PASS))
    images = random_images([(64, 48)])
    synonyms = Ontology.from_mapping({"a": ["car", "zebra dog"]})
    two_classes = Ontology.from_mapping({"a": "car", "b": "zebra dog"})
    assert set(detector.propose(images, synonyms)[0].class_id.tolist()) == {0}
    assert set(detector.propose(images, two_classes)[0].class_id.tolist()) == {0, 1}


# The README's attribute class: glasses_man detects "man" beside a plain man class. ("man" and
# "dog" because each of them wins some boxes in every tiny random detector.)
SHARED_PHRASE = parse_ontology(
    """
classes:
  - name: man
    detect: man
  - name: glasses_man
    detect: man
    verify: Is this a man wearing glasses?
  - name: dog
    detect: [dog, zebra dog]
"""
)
WITHOUT_ATTRIBUTE = parse_ontology(
    "classes:\n  - {name: man, detect: man}\n  - {name: dog, detect: [dog, zebra dog]}\n"
)


@pytest.mark.parametrize("model_dir", ["gdino_dir", "owl_dir", "omdet_dir"])
def test_classes_sharing_a_phrase_each_get_every_box_it_finds(
    request: pytest.FixtureRequest, model_dir: str
) -> None:
    options = DetectorOptions(**ALL_PASS, max_det=1000)  # no proposal is cut
    detector = load_detector(request.getfixturevalue(model_dir), options)
    images = random_images([(64, 48), (50, 100)], seed=3)
    with count_forwards(detector) as calls:
        shared = detector.propose(images, SHARED_PHRASE)
    assert calls == [1], "the shared phrase is asked about once, with the others"
    plain = detector.propose(images, WITHOUT_ATTRIBUTE)
    assert sum(int((dets.class_id == 1).sum()) for dets in shared) > 0
    for with_copies, without in zip(shared, plain, strict=True):
        man, glasses_man = (with_copies[with_copies.class_id == i] for i in (0, 1))
        # The same boxes with the same scores, for the verifier to ask each class's question.
        np.testing.assert_array_equal(glasses_man.xyxy, man.xyxy)
        np.testing.assert_array_equal(glasses_man.confidence, man.confidence)
        np.testing.assert_array_equal(glasses_man.data["box_score"], man.data["box_score"])
        # Every other proposal is what the ontology without the attribute class gives (the same
        # text inputs; OmDet-Turbo's text-embedding cache can change the last float bits).
        for class_id, plain_id in ((0, 0), (2, 1)):
            mine = with_copies[with_copies.class_id == class_id]
            theirs = without[without.class_id == plain_id]
            np.testing.assert_allclose(mine.xyxy, theirs.xyxy, atol=1e-3)
            np.testing.assert_allclose(mine.confidence, theirs.confidence, rtol=1e-5)
            np.testing.assert_allclose(mine.data["box_score"], theirs.data["box_score"], rtol=1e-5)
        assert len(with_copies) == len(without) + len(glasses_man)
        assert np.all(np.diff(with_copies.confidence) <= 0)


def test_a_shared_phrase_is_in_the_grounding_dino_prompt_once(gdino_dir: Path) -> None:
    detector = load_detector(gdino_dir)
    assert SHARED_PHRASE.distinct_phrases == ["man", "dog", "zebra dog"]
    (chunk,) = detector._plan(SHARED_PHRASE).chunks
    assert detector.processor.tokenizer.decode(chunk.text_inputs["input_ids"][0]) == (
        "[CLS] man. dog. zebra dog. [SEP]"
    )


def test_batched_result_equals_one_image_at_a_time(gdino_dir: Path) -> None:
    images = random_images([(64, 48)] * 3, seed=1)  # same size: no padding differences
    batched = load_detector(gdino_dir, DetectorOptions(**ALL_PASS, batch_size=3))
    single = load_detector(gdino_dir, DetectorOptions(**ALL_PASS, batch_size=1))
    for one, other in zip(
        batched.propose(images, ONTOLOGY), single.propose(images, ONTOLOGY), strict=True
    ):
        np.testing.assert_allclose(one.xyxy, other.xyxy, atol=1e-3)
        np.testing.assert_array_equal(one.class_id, other.class_id)
        np.testing.assert_allclose(one.confidence, other.confidence, atol=1e-4)


def test_owlv2_mixed_sizes_batched_equals_single(owl_dir: Path) -> None:
    options = DetectorOptions(**ALL_PASS, max_det=5, batch_size=4)
    images = random_images([(64, 48), (40, 60), (33, 33)])
    batched = load_detector(owl_dir, options).propose(images, ONTOLOGY)
    assert_valid(batched, images, options)
    assert sum(len(d) for d in batched) > 0
    single = load_detector(owl_dir, DetectorOptions(**ALL_PASS, max_det=5, batch_size=1))
    for one, other in zip(batched, single.propose(images, ONTOLOGY), strict=True):
        np.testing.assert_allclose(one.xyxy, other.xyxy, atol=1e-3)
        np.testing.assert_array_equal(one.class_id, other.class_id)


def test_empty_image_list_and_fingerprint(gdino_dir: Path) -> None:
    detector = load_detector(gdino_dir, DetectorOptions(box_threshold=0.4, max_det=7))
    assert detector.propose([], ONTOLOGY) == []
    fingerprint = detector.fingerprint()
    json.dumps(fingerprint)
    assert fingerprint["model_id"] == str(gdino_dir)
    assert fingerprint["model_type"] == "grounding-dino"
    assert (fingerprint["box_threshold"], fingerprint["max_det"]) == (0.4, 7)
    assert (fingerprint["device_type"], fingerprint["dtype"]) == ("cpu", "float32")


def test_fingerprint_says_how_each_family_scores_a_phrase(gdino_dir: Path, owl_dir: Path) -> None:
    assert load_detector(gdino_dir).fingerprint()["phrase_score"] == "mean_over_span"
    assert load_detector(owl_dir).fingerprint()["phrase_score"] == "query_logit"


# --- options and load errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("box_threshold", -0.1, "box_threshold"),
        ("text_threshold", float("nan"), "text_threshold"),
        ("nms_iou", 1.5, "nms_iou"),
        ("max_det", 0, "max_det"),
        ("batch_size", 0, "batch_size"),
        ("dtype", "float8", "dtype"),
    ],
)
def test_bad_options_are_input_errors(field: str, value: object, message: str) -> None:
    with pytest.raises(InputError, match=message):
        DetectorOptions(**{field: value})  # type: ignore[arg-type]


def test_cuda_without_cuda_is_an_input_error(gdino_dir: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(InputError, match="CUDA is not available"):
        load_detector(gdino_dir, DetectorOptions(device="cuda"))


def test_missing_local_dir_says_the_path_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ModelLoadError) as error:
        load_detector(missing)
    assert f"the local path {missing} does not exist" in str(error.value)
    assert "hf download" in str(error.value)


@pytest.mark.parametrize(
    ("damage", "stage"),
    [
        (lambda path: (path / "config.json").unlink(), "config"),
        (lambda path: (path / "config.json").write_text("{not json"), "config"),
        (lambda path: (path / "model.safetensors").unlink(), "weights"),
        (lambda path: (path / "model.safetensors").write_bytes(b"\0" * 64), "weights"),
        (lambda path: (path / "tokenizer.json").unlink(), "processor"),
    ],
    ids=["no-config", "bad-config", "no-weights", "bad-weights", "no-tokenizer"],
)
def test_unloadable_dir_names_the_dir_the_reason_and_the_fix(
    gdino_dir: Path, tmp_path: Path, damage, stage: str
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for file in gdino_dir.iterdir():
        (broken / file.name).write_bytes(file.read_bytes())
    damage(broken)
    with pytest.raises(ModelLoadError) as error:
        load_detector(broken)
    message = str(error.value)
    assert f"from local directory {broken} ({stage}: " in message
    assert "hf download IDEA-Research/grounding-dino-tiny --local-dir DIR" in message


def test_unsupported_architecture_lists_the_supported_families(tmp_path: Path) -> None:
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as error:
        load_detector(tmp_path)
    message = str(error.value)
    assert "'bert' is not a supported zero-shot detector" in message
    assert "grounding-dino" in message and "owlv2" in message


@pytest.mark.skipif(
    not huggingface_hub.constants.HF_HUB_OFFLINE, reason="needs HF_HUB_OFFLINE=1 (no network)"
)
def test_hub_id_not_available_offline_says_how_to_download() -> None:
    with pytest.raises(ModelLoadError) as error:
        load_detector("promptlabel-tests/no-such-detector")
    message = str(error.value)
    assert "'promptlabel-tests/no-such-detector' from the Hugging Face hub" in message
    assert "hf download promptlabel-tests/no-such-detector --local-dir DIR" in message
    assert "HF_HUB_OFFLINE=1" in message


# --- OmDet-Turbo ---------------------------------------------------------------------------------


def test_omdet_turbo_text_inputs_are_what_its_processor_makes(omdet_dir: Path) -> None:
    detector = load_detector(omdet_dir)
    phrases = list(ONTOLOGY.phrases)
    (chunk,) = _encode_text_omdet_turbo(detector.processor, detector.model.config, phrases)
    expected = detector.processor(
        images=random_images([(64, 48)]), text=phrases, return_tensors="pt"
    )  # default task: "Detect car, red automobile, zebra dog, person."
    assert set(chunk.text_inputs) == set(expected) - {"pixel_values"}
    for key, value in chunk.text_inputs.items():
        torch.testing.assert_close(value, expected[key], msg=key)
    tokenizer = detector.processor.tokenizer
    task = tokenizer.decode(chunk.text_inputs["tasks_input_ids"][0], skip_special_tokens=True)
    # CLIP lower-cases; this byte-level decode puts a space before punctuation.
    assert task.replace(" ", "") == "detectcar,redautomobile,zebradog,person."
    assert chunk.phrase_ids.tolist() == [0, 1, 2, 3]


def test_omdet_turbo_long_phrase_is_named_and_long_task_is_cut(omdet_dir: Path) -> None:
    detector = load_detector(omdet_dir)
    config = detector.model.config
    with pytest.raises(InputError, match=r"zebra.*tokens long"):
        _encode_text_omdet_turbo(detector.processor, config, ["zebra " * 20])  # a token a byte
    phrases = [f"dog {i}" for i in range(20)]  # ~120 tokens of task: more than 77
    (chunk,) = _encode_text_omdet_turbo(detector.processor, config, phrases)
    assert chunk.text_inputs["tasks_input_ids"].shape == (1, 77)
    assert chunk.text_inputs["classes_input_ids"].shape == (20, 77)
    assert chunk.text_inputs["classes_structure"].tolist() == [20]


def test_omdet_turbo_box_decoding_matches_transformers_post_processing(omdet_dir: Path) -> None:
    detector = load_detector(omdet_dir)
    images = random_images([(64, 48), (50, 100)])
    (chunk,) = _encode_text_omdet_turbo(detector.processor, detector.model.config, ["a cat"])
    inputs = detector.processor(images=images, text=[["a cat"], ["a cat"]], return_tensors="pt")
    with torch.inference_mode():
        outputs = detector.model(**inputs)
    sizes_hw = [(image.height, image.width) for image in images]
    # One class, every query kept (IoU never exceeds 1), sorted by score: one box per query.
    expected = detector.processor.post_process_grounded_object_detection(
        outputs, threshold=-1.0, nms_threshold=1.0, target_sizes=sizes_hw
    )
    decoded = _decode_omdet_turbo(outputs, chunk, torch.tensor([[64.0, 48.0], [50.0, 100.0]]))
    torch.testing.assert_close(decoded.box_scores, decoded.phrase_scores[..., 0])
    for i, (height, width) in enumerate(sizes_hw):
        order = decoded.box_scores[i].argsort(descending=True)
        torch.testing.assert_close(decoded.box_scores[i, order], expected[i]["scores"])
        limits = torch.tensor([width, height, width, height], dtype=torch.float32)
        clipped = decoded.xyxy_px[i, order].clamp(torch.zeros(4), limits)  # as it clips
        torch.testing.assert_close(clipped, expected[i]["boxes"])


def test_omdet_turbo_mixed_sizes_one_forward_and_batched_equals_single(omdet_dir: Path) -> None:
    options = DetectorOptions(**ALL_PASS, max_det=8, batch_size=4)
    detector = load_detector(omdet_dir, options)
    assert detector.model.config.model_type == "omdet-turbo"
    images = random_images([(64, 48), (50, 100)])
    with count_forwards(detector) as calls:
        batched = detector.propose(images, ONTOLOGY)  # 3 classes, 4 phrases
    assert calls == [1]
    assert_valid(batched, images, options)
    assert all(len(dets) == 8 for dets in batched), "30 random queries leave more than 8"
    assert set(np.concatenate([d.class_id for d in batched]).tolist()) <= {0, 1, 2}
    for dets in batched:  # no objectness: the box score is the best phrase score
        np.testing.assert_allclose(dets.data["box_score"], dets.confidence)
    single = load_detector(omdet_dir, DetectorOptions(**ALL_PASS, max_det=8, batch_size=1))
    with count_forwards(single) as calls:
        one_by_one = single.propose(images, ONTOLOGY)
    assert calls == [2]
    for one, other in zip(batched, one_by_one, strict=True):
        np.testing.assert_allclose(one.xyxy, other.xyxy, atol=1e-3)
        np.testing.assert_array_equal(one.class_id, other.class_id)
        np.testing.assert_allclose(one.confidence, other.confidence, atol=1e-4)


def test_omdet_turbo_thresholds_are_respected(omdet_dir: Path) -> None:
    images = random_images([(64, 48), (40, 60)], seed=2)
    everything = load_detector(omdet_dir, DetectorOptions(**ALL_PASS, max_det=100))
    scores = np.concatenate([d.confidence for d in everything.propose(images, ONTOLOGY)])
    threshold = float(np.median(scores))
    for field in ("box_threshold", "text_threshold"):
        options = DetectorOptions(**{**ALL_PASS, field: threshold, "max_det": 100})
        kept = load_detector(omdet_dir, options).propose(images, ONTOLOGY)
        assert_valid(kept, images, options)
        assert 0 < sum(len(d) for d in kept) < len(scores), field
    strict = load_detector(omdet_dir, DetectorOptions(box_threshold=1.01))
    assert [len(d) for d in strict.propose(images, ONTOLOGY)] == [0, 0]


def test_unsupported_architecture_error_lists_omdet_turbo(tmp_path: Path) -> None:
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError) as error:
        load_detector(tmp_path)
    assert "OmDet-Turbo (omdet-turbo)" in str(error.value)
    assert "not supported yet" not in str(error.value)
