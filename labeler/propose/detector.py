"""PROPOSE: an open-vocabulary detector turns images + an ontology into candidate boxes.

One forward pass per image batch covers every distinct phrase of every class: the phrases go into
the model together (Grounding DINO: one prompt ``"phrase one. phrase two."``; OWL-ViT/OWLv2: one
text query per phrase; OmDet-Turbo: one class per phrase plus the task prompt ``"Detect phrase
one, phrase two."``) and each box gets a score per phrase from the model's own outputs
(token-span scores for Grounding DINO, per-query or per-class logits for the others), never from
decoding phrase strings. Each box takes its best phrase and is proposed once for every class that
detects that phrase, with that phrase's score: a class scores the best of its phrases (synonyms
merged), and classes sharing a phrase (an attribute class ``glasses_person`` beside ``person``)
each get the box, for the verifier to check with each class's own question. Class-aware NMS then
merges duplicates within each class, synonyms included; copies of one box for different classes
never suppress each other.

Model-specific code is confined to one text encoder and one output decoder per family, chosen by
``config.model_type`` from ``_FAMILIES``; everything after a decoder is shared.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from PIL import Image
from torchvision.ops import batched_nms, box_convert
from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

from labeler.core.detections import Detections
from labeler.core.exceptions import InputError, ModelLoadError
from labeler.ontology import Ontology
from labeler.propose.options import DEFAULT_DETECTOR, DTYPE_NAMES, DetectorOptions

__all__ = ["SUPPORTED_MODEL_TYPES", "Detector", "DetectorOptions", "load_detector"]

logger = logging.getLogger(__name__)

_DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}


# ---------------------------------------------------------------------------------------------
# Family adapters: text encoding and output decoding, the only model-specific code.


@dataclass(frozen=True)
class _TextChunk:
    """Text inputs for one forward pass over some of the ontology's phrases.

    ``text_inputs`` hold one image's worth (dim 0 is repeated for a batch: Grounding DINO's
    ``(1, T)`` prompt becomes ``(B, T)``, OWL's ``(Q, L)`` queries become ``(B * Q, L)``, as do
    OmDet-Turbo's ``(P, L)`` classes; its ``(1, L)`` task and ``(1,)`` class count become
    ``(B, L)`` and ``(B,)``).
    ``phrase_ids`` index ``Ontology.distinct_phrases``. ``positive_map`` ``(P, T)`` (Grounding
    DINO only) has ``1 / span length`` on each phrase's tokens, so ``token_probs @ positive_map.T``
    is the mean over the span.
    """

    text_inputs: dict[str, torch.Tensor]
    phrase_ids: torch.Tensor
    positive_map: torch.Tensor | None = None


@dataclass(frozen=True)
class _Decoded:
    """One forward pass decoded: ``(B, N, 4)`` xyxy in original pixels, ``(B, N, P)`` phrase
    scores in [0, 1] and ``(B, N)`` box scores (what ``box_threshold`` applies to)."""

    xyxy_px: torch.Tensor
    phrase_scores: torch.Tensor
    box_scores: torch.Tensor


@dataclass(frozen=True)
class _Family:
    name: str
    encode_text: Callable[[Any, Any, Sequence[str]], list[_TextChunk]]
    decode: Callable[[Any, _TextChunk, torch.Tensor], _Decoded]
    phrase_score: str  # how a phrase's score is read from the outputs, for provenance


_GROUNDING_SEPARATORS = re.compile(r"[.?\s]+")


def _grounding_phrase(phrase: str) -> str:
    """Lower case (as Grounding DINO was trained) with ``.`` and ``?`` removed: the model splits
    its prompt into phrases at those tokens, so inside a phrase they would cut it in two."""
    return _GROUNDING_SEPARATORS.sub(" ", phrase.lower()).strip()


def _grounding_spans(offsets: torch.Tensor, spans_chars: torch.Tensor) -> torch.Tensor:
    """``(P, T)`` bool: token t lies inside phrase p's character span ``[start, end)``.

    ``offsets`` is the tokenizer's ``(T, 2)`` offset mapping; special tokens have empty offsets
    and belong to no phrase.
    """
    starts, ends = offsets[:, 0], offsets[:, 1]
    return (
        (starts[None, :] >= spans_chars[:, :1])
        & (ends[None, :] <= spans_chars[:, 1:])
        & (ends > starts)[None, :]
    )


def _encode_text_grounding_dino(
    processor: Any, config: Any, phrases: Sequence[str]
) -> list[_TextChunk]:
    """``"phrase one. phrase two."`` prompts with each phrase's token span.

    Grounding DINO reads at most ``config.max_text_len`` (256) tokens. When all phrases do not
    fit, they are packed in ontology order into several prompts, one forward pass each; a single
    phrase longer than the limit is an InputError.
    """
    tokenizer = processor.tokenizer
    max_tokens = int(config.max_text_len)
    cleaned = [_grounding_phrase(p) for p in phrases]
    lengths = [len(ids) for ids in tokenizer(cleaned, add_special_tokens=False)["input_ids"]]
    for phrase, length in zip(phrases, lengths, strict=True):
        if length == 0:
            raise InputError(f"detector phrase {phrase!r} has no words the detector can read")
        if length + 3 > max_tokens:  # [CLS] phrase . [SEP]
            raise InputError(
                f"detector phrase {phrase!r} is {length} tokens long; the detector reads at most "
                f"{max_tokens - 3} tokens per phrase. Shorten it."
            )
    groups: list[list[int]] = [[]]
    used = 2  # [CLS] and [SEP]
    for index, length in enumerate(lengths):
        if groups[-1] and used + length + 1 > max_tokens:
            groups.append([])
            used = 2
        groups[-1].append(index)
        used += length + 1
    if len(groups) > 1:
        logger.info(
            "%d detector phrases exceed %d tokens together; running %d passes per image batch",
            len(phrases), max_tokens, len(groups),
        )  # fmt: skip
    return [_grounding_chunk(tokenizer, cleaned, group, max_tokens) for group in groups]


def _grounding_chunk(
    tokenizer: Any, cleaned: Sequence[str], group: Sequence[int], max_tokens: int
) -> _TextChunk:
    text = ". ".join(cleaned[i] for i in group) + "."
    spans, start = [], 0
    for i in group:
        spans.append((start, start + len(cleaned[i])))
        start += len(cleaned[i]) + 2  # ". "
    encoding = tokenizer(
        text, return_offsets_mapping=True, return_token_type_ids=True, return_tensors="pt"
    )
    offsets = encoding.pop("offset_mapping")[0]
    if offsets.shape[0] > max_tokens:  # packing counted tokens per phrase; guard the sum
        raise InputError(f"detector prompt {text!r} is longer than {max_tokens} tokens")
    member = _grounding_spans(offsets, torch.tensor(spans, dtype=offsets.dtype))
    counts = member.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        empty = [cleaned[group[i]] for i in (counts[:, 0] == 0).nonzero()[:, 0].tolist()]
        raise InputError(f"detector phrases {empty} map to no tokens of the detector's tokenizer")
    return _TextChunk(
        text_inputs=dict(encoding),
        phrase_ids=torch.tensor(list(group), dtype=torch.long),
        positive_map=member.float() / counts,
    )


def _span_scores(
    token_probs: torch.Tensor, positive_map: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Phrase scores ``(B, N, P)`` and box scores ``(B, N)`` from token probabilities ``(B, N, T)``.

    A phrase scores the MEAN of its tokens' probabilities (GLIP's and mmdet's
    ``convert_grounding_to_cls_scores`` reduction): a box must match the whole phrase, so "red car"
    does not fire on any red thing the way a max over tokens would. The box score stays the MAX
    over all phrase tokens, Grounding DINO's own box score, so box_threshold means what it means
    there.
    """
    phrase_scores = token_probs @ positive_map.transpose(0, 1).to(token_probs.dtype)
    box_scores = token_probs[..., positive_map.sum(dim=0) > 0].amax(dim=-1)
    return phrase_scores, box_scores


def _decode_grounding_dino(outputs: Any, chunk: _TextChunk, image_wh: torch.Tensor) -> _Decoded:
    """Grounding DINO / MM Grounding DINO outputs to boxes and phrase scores.

    ``pred_boxes`` are normalized cxcywh relative to each unpadded image, so, as in the
    processor's ``post_process_grounded_object_detection`` with ``target_sizes``, the corners are
    scaled by the original width and height. Logits of masked tokens are -inf (sigmoid 0).
    """
    assert chunk.positive_map is not None
    num_tokens = chunk.positive_map.shape[1]
    token_probs = outputs.logits[..., :num_tokens].float().sigmoid()
    phrase_scores, box_scores = _span_scores(token_probs, chunk.positive_map)
    xyxy = box_convert(outputs.pred_boxes.float(), "cxcywh", "xyxy")
    return _Decoded(xyxy * image_wh.repeat(1, 2)[:, None, :], phrase_scores, box_scores)


def _encode_phrases_padded(
    tokenizer: Any, config: Any, phrases: Sequence[str], *, unit: str
) -> Any:
    """Each phrase padded to the text model's length (one row per phrase); a phrase longer than
    that raises InputError naming it (``unit`` says what one phrase is to the model)."""
    max_tokens = int(config.text_config.max_position_embeddings)
    lengths = [len(ids) for ids in tokenizer(list(phrases))["input_ids"]]
    for phrase, length in zip(phrases, lengths, strict=True):
        if length > max_tokens:
            raise InputError(
                f"detector phrase {phrase!r} is {length} tokens long; the detector reads at most "
                f"{max_tokens} tokens per {unit} (start and end included). Shorten it."
            )
    return tokenizer(
        list(phrases), padding="max_length", max_length=max_tokens, return_tensors="pt"
    )


def _encode_text_owl(processor: Any, config: Any, phrases: Sequence[str]) -> list[_TextChunk]:
    """One text query per phrase, padded to the text model's length; all in one pass."""
    encoding = _encode_phrases_padded(processor.tokenizer, config, phrases, unit="query")
    return [
        _TextChunk(
            text_inputs={k: encoding[k] for k in ("input_ids", "attention_mask")},
            phrase_ids=torch.arange(len(phrases)),
        )
    ]


def _owl_scores(outputs: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    phrase_scores = outputs.logits.float().sigmoid()  # (B, N, Q): one logit per query already
    xyxy = box_convert(outputs.pred_boxes.float(), "cxcywh", "xyxy")
    return xyxy, phrase_scores, phrase_scores.amax(dim=-1)


def _decode_owlv2(outputs: Any, chunk: _TextChunk, image_wh: torch.Tensor) -> _Decoded:
    """OWLv2 pads each image to a square (bottom and right) before resizing, so its normalized
    boxes are relative to a ``max(w, h)`` square (see its ``_scale_boxes``)."""
    xyxy, phrase_scores, box_scores = _owl_scores(outputs)
    side = image_wh.amax(dim=1, keepdim=True).repeat(1, 4)
    return _Decoded(xyxy * side[:, None, :], phrase_scores, box_scores)


def _decode_owlvit(outputs: Any, chunk: _TextChunk, image_wh: torch.Tensor) -> _Decoded:
    """OWL-ViT stretches each image to its square input, so boxes scale by width and height."""
    xyxy, phrase_scores, box_scores = _owl_scores(outputs)
    return _Decoded(xyxy * image_wh.repeat(1, 2)[:, None, :], phrase_scores, box_scores)


def _encode_text_omdet_turbo(
    processor: Any, config: Any, phrases: Sequence[str]
) -> list[_TextChunk]:
    """Every phrase as one OmDet-Turbo class, with the task ``"Detect phrase one, phrase two."``
    (``OmDetTurboProcessor``'s default task); all in one pass.

    Classes and task are padded to the text model's length like the processor does (CLIP pools a
    class at its end token, so padding does not change it). A phrase longer than that is an
    InputError. A task longer than that is cut, as the processor cuts it: the task only conditions
    the decoder, every phrase is still scored through its own class embedding.
    """
    tokenizer = processor.tokenizer
    max_tokens = int(config.text_config.max_position_embeddings)
    classes = _encode_phrases_padded(tokenizer, config, phrases, unit="class")
    task = f"Detect {', '.join(phrases)}."
    task_length = len(tokenizer(task)["input_ids"])
    if task_length > max_tokens:
        logger.info(
            "OmDet-Turbo task prompt is %d tokens; the detector reads the first %d (all %d phrases "
            "are still scored)", task_length, max_tokens, len(phrases),
        )  # fmt: skip
    tasks = tokenizer(
        [task], padding="max_length", truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    return [
        _TextChunk(
            text_inputs={
                "classes_input_ids": classes["input_ids"],
                "classes_attention_mask": classes["attention_mask"],
                "tasks_input_ids": tasks["input_ids"],
                "tasks_attention_mask": tasks["attention_mask"],
                "classes_structure": torch.tensor([len(phrases)]),
            },
            phrase_ids=torch.arange(len(phrases)),
        )
    ]


def _decode_omdet_turbo(outputs: Any, chunk: _TextChunk, image_wh: torch.Tensor) -> _Decoded:
    """OmDet-Turbo outputs to boxes and phrase scores.

    ``decoder_class_logits`` ``(B, N, P)`` hold one logit per class (= phrase); there is no
    separate objectness, so the box score is the best phrase score, as in the processor's
    ``post_process_grounded_object_detection``. ``decoder_coord_logits`` are normalized cxcywh
    (already sigmoided); the processor's image processor resizes every image to one fixed size
    (640x640, no padding, for the released checkpoints), so, as in that post-processing with
    ``target_sizes``, the corners scale by each image's original width and height.
    """
    num_phrases = chunk.phrase_ids.shape[0]
    phrase_scores = outputs.decoder_class_logits[..., :num_phrases].float().sigmoid()
    xyxy = box_convert(outputs.decoder_coord_logits.float(), "cxcywh", "xyxy")
    return _Decoded(
        xyxy * image_wh.repeat(1, 2)[:, None, :], phrase_scores, phrase_scores.amax(dim=-1)
    )


# A phrase's score: the mean of its tokens' probabilities (Grounding DINO's prompt is one text),
# or the sigmoid of its own query's logit (OWL's and OmDet-Turbo's one query per phrase).
_GROUNDING_DINO = _Family(
    "Grounding DINO", _encode_text_grounding_dino, _decode_grounding_dino, "mean_over_span"
)
_FAMILIES: dict[str, _Family] = {
    "grounding-dino": _GROUNDING_DINO,
    "mm-grounding-dino": _GROUNDING_DINO,
    "owlv2": _Family("OWLv2", _encode_text_owl, _decode_owlv2, "query_logit"),
    "owlvit": _Family("OWL-ViT", _encode_text_owl, _decode_owlvit, "query_logit"),
    "omdet-turbo": _Family(
        "OmDet-Turbo", _encode_text_omdet_turbo, _decode_omdet_turbo, "query_logit"
    ),
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(_FAMILIES)

# ---------------------------------------------------------------------------------------------
# Shared: phrases -> classes, thresholds, NMS, Detections.


def _best_phrase_classes(
    phrase_scores: torch.Tensor, phrase_ids: torch.Tensor, phrase_classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each box's best phrase: its score ``(B, N)`` and the classes that detect it ``(B, N, C)``.

    ``phrase_scores`` ``(B, N, P)`` come from one text chunk, ``phrase_ids`` ``(P,)`` index the
    ontology's distinct phrases, and ``phrase_classes`` ``(U, C)`` (bool) marks the classes that
    detect each. The score is the class score of every class marked: each class scores the best of
    its phrases, and the best phrase overall is the best of every class that has it. On a tie the
    first phrase wins (ontology order).
    """
    confidence, best = phrase_scores.max(dim=-1)
    phrase_id = phrase_ids.to(best.device)[best]
    return confidence, phrase_classes.to(best.device)[phrase_id]


def _select_detections(
    xyxy_px: torch.Tensor,
    confidence: torch.Tensor,
    class_mask: torch.Tensor,
    box_scores: torch.Tensor,
    image_wh: torch.Tensor,
    options: DetectorOptions,
) -> list[Detections]:
    """Per image: clip, threshold, one proposal per box and class, class-aware NMS, best first.

    ``confidence`` ``(B, N)`` is each box's best phrase score and ``class_mask`` ``(B, N, C)`` the
    classes that detect that phrase (see ``_best_phrase_classes``). A box is kept when its box
    score >= ``box_threshold`` and its phrase score >= ``text_threshold``; boxes with no area
    after clipping are dropped. A kept box becomes one proposal for each class marked (same box,
    same scores); NMS runs per class, so those copies do not suppress each other, and
    ``max_det`` counts proposals, copies included.
    """
    width, height = image_wh[:, :1], image_wh[:, 1:]
    x1, y1, x2, y2 = xyxy_px.unbind(-1)
    zero = torch.zeros_like(width)
    x1, x2 = x1.clamp(zero, width), x2.clamp(zero, width)
    y1, y2 = y1.clamp(zero, height), y2.clamp(zero, height)
    clipped = torch.stack([x1, y1, x2, y2], dim=-1)
    keep = (
        (box_scores >= options.box_threshold)
        & (confidence >= options.text_threshold)
        & (x2 > x1)
        & (y2 > y1)
    )
    results = []
    for i in range(xyxy_px.shape[0]):
        # Rows in box order, and within a box in class order.
        index, classes = (keep[i, :, None] & class_mask[i]).nonzero().unbind(dim=1)
        boxes, scores = clipped[i, index], confidence[i, index]
        kept = batched_nms(boxes, scores, classes, options.nms_iou).sort().values
        # Best first; equal scores (a box's copies) stay in row order, whatever order NMS used.
        order = kept[scores[kept].sort(descending=True, stable=True).indices][: options.max_det]
        w, h = (int(v) for v in image_wh[i].tolist())
        results.append(
            Detections(
                xyxy=boxes[order].cpu().numpy(),
                class_id=classes[order].cpu().numpy(),
                confidence=scores[order].cpu().numpy(),
                data={"box_score": box_scores[i, index][order].cpu().numpy()},
                metadata={"image_wh": (w, h)},
            )
        )
    return results


@dataclass(frozen=True)
class _Plan:
    """An ontology made ready for one model: text chunks over its distinct phrases, and
    ``phrase_classes`` ``(U, C)`` (bool): which classes detect each distinct phrase."""

    chunks: tuple[_TextChunk, ...]
    phrase_classes: torch.Tensor


# ---------------------------------------------------------------------------------------------
# Detector and loader.


class Detector:
    """One loaded zero-shot detector; create it with ``load_detector``."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        model_id: str,
        options: DetectorOptions,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.model_id = model_id
        self.options = options
        self.device = device
        self.dtype = dtype
        self._model = model
        self._processor = processor
        self._family = _FAMILIES[model.config.model_type]
        accepted = set(inspect.signature(model.forward).parameters)
        self._pixel_keys = tuple(k for k in ("pixel_values", "pixel_mask") if k in accepted)
        self._text_keys = accepted
        self._plans: dict[tuple[tuple[str, ...], tuple[int, ...]], _Plan] = {}

    @property
    def model(self) -> Any:
        """The underlying transformers model (eval mode, on ``device``)."""
        return self._model

    @property
    def processor(self) -> Any:
        """The transformers processor (image processor + tokenizer) loaded with the model."""
        return self._processor

    def __repr__(self) -> str:
        return f"Detector({self.model_id!r}, {self._family.name}, {self.device}, {self.dtype})"

    def with_options(self, options: DetectorOptions) -> Detector:
        """This loaded model with other thresholds and batch size (no reload, weights shared).

        ``options.device`` and ``options.dtype`` are those it was loaded with; to change them,
        load again.
        """
        return Detector(
            self._model,
            self._processor,
            model_id=self.model_id,
            options=replace(options, device=self.options.device, dtype=self.options.dtype),
            device=self.device,
            dtype=self.dtype,
        )

    def propose(self, images: Sequence[Image.Image], ontology: Ontology) -> list[Detections]:
        """One ``Detections`` per image, in order.

        Boxes are xyxy in original pixels, clipped to the image, sorted by confidence (the class
        score) descending, at most ``max_det``; ``class_id`` indexes ``ontology.classes``. A box
        whose best phrase several classes share is one proposal per class (same box and scores);
        ``data["box_score"]`` is the detector's box score; ``metadata["image_wh"]`` is (w, h).
        Images go through the model ``options.batch_size`` at a time, one forward pass per batch
        for all phrases (more only when a Grounding DINO prompt must be split, see
        ``_encode_text_grounding_dino``). With ``options.tile_px`` each image is also proposed
        on tiles and the boxes merged (``labeler.propose.tiling.propose_tiled``); then
        ``data["tile_index"]`` and ``data["tile_xyxy"]`` say which tile found each box.
        """
        plan = self._plan(ontology)
        if self.options.tile_px is not None:
            from labeler.propose.tiling import propose_tiled

            return propose_tiled(
                images,
                lambda batch: self._propose_batch(batch, plan),
                tile_px=self.options.tile_px,
                overlap=self.options.tile_overlap,
                batch_size=self.options.batch_size,
                max_det=self.options.max_det,
            )
        results: list[Detections] = []
        step = self.options.batch_size
        for start in range(0, len(images), step):
            results.extend(self._propose_batch(images[start : start + step], plan))
        return results

    def fingerprint(self) -> dict[str, object]:
        """Everything that changes the proposals, for provenance records (JSON-serializable)."""
        config = self._model.config
        return {
            "model_id": self.model_id,
            "model_type": config.model_type,
            "model_revision": getattr(config, "_commit_hash", None),
            "transformers": transformers.__version__,
            "box_threshold": self.options.box_threshold,
            "text_threshold": self.options.text_threshold,
            "max_det": self.options.max_det,
            "nms_iou": self.options.nms_iou,
            "device_type": self.device.type,
            "dtype": str(self.dtype).removeprefix("torch."),
            # Mixed image sizes are padded to a common size within a batch, which changes
            # Grounding DINO's features slightly, so the batch size matters too.
            "batch_size": self.options.batch_size,
            "phrase_score": self._family.phrase_score,
            "tile_px": self.options.tile_px,
            "tile_overlap": self.options.tile_overlap if self.options.tile_px else None,
        }

    def _plan(self, ontology: Ontology) -> _Plan:
        # Tokenize once per ontology, not per batch.
        key = (tuple(ontology.phrases), tuple(ontology.phrase_class_ids))
        plan = self._plans.get(key)
        if plan is None:
            # A phrase shared by several classes is asked about once.
            phrases = ontology.distinct_phrases
            chunks = self._family.encode_text(self._processor, self._model.config, phrases)
            chunks = [
                _TextChunk(
                    text_inputs={
                        k: v.to(self.device)
                        for k, v in chunk.text_inputs.items()
                        if k in self._text_keys
                    },
                    phrase_ids=chunk.phrase_ids,
                    positive_map=(
                        None if chunk.positive_map is None else chunk.positive_map.to(self.device)
                    ),
                )
                for chunk in chunks
            ]
            phrase_classes = torch.zeros(len(phrases), len(ontology.classes), dtype=torch.bool)
            for phrase_id, class_ids in enumerate(ontology.distinct_phrase_class_ids):
                phrase_classes[phrase_id, list(class_ids)] = True
            plan = _Plan(chunks=tuple(chunks), phrase_classes=phrase_classes.to(self.device))
            self._plans[key] = plan
        return plan

    def _propose_batch(self, images: Sequence[Image.Image], plan: _Plan) -> list[Detections]:
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        batch = len(rgb)
        image_wh = torch.tensor([image.size for image in rgb], dtype=torch.float32)
        pixels = self._processor.image_processor(images=rgb, return_tensors="pt")
        pixel_inputs = {
            key: pixels[key].to(self.device, self.dtype)
            if pixels[key].is_floating_point()
            else pixels[key].to(self.device)
            for key in self._pixel_keys
            if key in pixels
        }
        image_wh = image_wh.to(self.device)
        parts = []
        with torch.inference_mode():
            for chunk in plan.chunks:
                text_inputs = {
                    k: v.repeat(batch, *([1] * (v.dim() - 1))) for k, v in chunk.text_inputs.items()
                }
                outputs = self._model(**pixel_inputs, **text_inputs)
                decoded = self._family.decode(outputs, chunk, image_wh)
                confidence, class_mask = _best_phrase_classes(
                    decoded.phrase_scores, chunk.phrase_ids, plan.phrase_classes
                )
                parts.append((decoded.xyxy_px, confidence, class_mask, decoded.box_scores))
            xyxy, confidence, class_mask, box_scores = (
                torch.cat(p, dim=1) for p in zip(*parts, strict=True)
            )
            return _select_detections(
                xyxy, confidence, class_mask, box_scores, image_wh, self.options
            )


def _resolve_device_dtype(options: DetectorOptions) -> tuple[torch.device, torch.dtype]:
    if options.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(options.device)
        except (RuntimeError, ValueError):
            raise InputError(
                f"detector device {options.device!r} is not a device name (auto, cpu, cuda, cuda:1)"
            ) from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise InputError(
                f"detector device {options.device!r} was asked for but CUDA is not available "
                "to torch here; use --device cpu (or auto)"
            )
    if options.dtype == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    else:
        dtype = _DTYPES[options.dtype]
    return device, dtype


def _short_reason(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = lines[0] if lines else type(exc).__name__
    return reason if len(reason) <= 240 else reason[:237] + "..."


def _is_local(model: str | Path) -> bool:
    """A Path, an existing path, or a string only a path looks like (``./x``, ``/x``, ``a/b/c``)."""
    if isinstance(model, Path) or Path(model).expanduser().exists():
        return True
    return model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1


def load_detector(model: str | Path, options: DetectorOptions | None = None) -> Detector:
    """Load a zero-shot detector from a hub id or a local directory, ready on its device.

    Raises ModelLoadError saying which model, from where, why, and what to do; InputError for
    impossible options (e.g. ``device="cuda"`` without CUDA).
    """
    options = options or DetectorOptions()
    device, dtype = _resolve_device_dtype(options)
    model_id = str(model)
    local = _is_local(model)
    source = str(Path(model).expanduser()) if local else model_id
    if local:
        where = f"local directory {source}"
        fix = (
            "Pass a directory written by `hf download "
            f"{DEFAULT_DETECTOR} --local-dir DIR` (or by save_pretrained) holding config.json, "
            "the weights and the processor and tokenizer files; download again if files are "
            "missing or damaged"
        )
        if not Path(source).exists():
            raise ModelLoadError(
                f"cannot load detector {model_id!r}: the local path {source} does not exist. {fix}."
            )
    else:
        where = "the Hugging Face hub (there is no local directory of that name)"
        fix = (
            f"Download it once on a machine with internet access with `hf download {model_id} "
            f"--local-dir DIR` and pass --detector DIR (HF_HUB_OFFLINE=1 makes transformers use "
            "local files only)"
        )

    def failure(stage: str, exc: Exception) -> ModelLoadError:
        return ModelLoadError(
            f"cannot load detector {model_id!r} from {where} ({stage}: {_short_reason(exc)}). "
            f"{fix}."
        )

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as exc:  # any failure here means "not loadable"; the cause stays chained
        raise failure("config", exc) from exc
    family = _FAMILIES.get(config.model_type)
    if family is None:
        raise ModelLoadError(
            f"cannot use detector {model_id!r} from {where}: its architecture "
            f"{config.model_type!r} is not a supported zero-shot detector. Supported families "
            "(config model_type): Grounding DINO (grounding-dino), MM Grounding DINO "
            "(mm-grounding-dino), OWLv2 (owlv2), OWL-ViT (owlvit), OmDet-Turbo (omdet-turbo). "
            f"Pass e.g. --detector {DEFAULT_DETECTOR}."
        )
    try:
        processor = AutoProcessor.from_pretrained(source)
    except Exception as exc:
        raise failure("processor", exc) from exc
    tokenizer = getattr(processor, "tokenizer", None)
    image_processor = getattr(processor, "image_processor", None)
    if tokenizer is None or image_processor is None or not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"cannot load detector {model_id!r} from {where}: its processor needs an image "
            f"processor and a fast (tokenizers) tokenizer, got {type(processor).__name__}. {fix}."
        )
    # Without its vocabulary file a tokenizer still loads, with a default vocabulary of a few
    # special tokens, and every word becomes unknown: catch that here, not as silent zero boxes.
    probe_ids = tokenizer("a dog", add_special_tokens=False)["input_ids"]
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in probe_ids:
        raise ModelLoadError(
            f"cannot load detector {model_id!r} from {where} (processor: its tokenizer reads "
            f"'a dog' as unknown tokens; tokenizer files missing or damaged). {fix}."
        )
    try:
        net = AutoModelForZeroShotObjectDetection.from_pretrained(source, dtype=dtype)
        net = net.to(device).eval()
    except Exception as exc:
        raise failure("weights", exc) from exc
    detector = Detector(
        net, processor, model_id=model_id, options=options, device=device, dtype=dtype
    )
    logger.info("loaded %r (%s) from %s", detector, family.name, where)
    return detector
