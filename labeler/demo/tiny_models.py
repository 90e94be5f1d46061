"""Tiny random detector checkpoints, built from configs with no download.

The offline demo and the tests use these: each builder writes a directory that
``labeler.propose.detector.load_detector`` loads through exactly the same code path as a real
checkpoint (``AutoProcessor`` + ``AutoModelForZeroShotObjectDetection``). Weights are random but
deterministic (seeded), the directories are well under a megabyte and load in a fraction of a
second. The tokenizers are built locally too:

* Grounding DINO hard-codes BERT's ids for ``[CLS]`` (101), ``[SEP]`` (102), ``.`` (1012) and ``?``
  (1029) to split the prompt into phrases, so ``build_bert_tokenizer`` lays out its vocabulary
  exactly like ``bert-base-uncased`` at those positions (printable ASCII from id 999) and adds a
  ``##`` continuation piece for every letter and digit, so any phrase tokenizes without ``[UNK]``.
* OWL-ViT/OWLv2 pool the text at the highest token id and treat id 0 as padding, so
  ``build_clip_tokenizer`` is a byte-level BPE with no merges whose ids end with
  ``<|startoftext|>``, ``<|endoftext|>`` and whose padding token ``!`` is id 0, as in CLIP.
  OmDet-Turbo uses the same tokenizer (its class embedding is pooled at the highest id too).
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    BertConfig,
    BertTokenizer,
    CLIPTokenizer,
    DetrImageProcessor,
    GroundingDinoConfig,
    GroundingDinoForObjectDetection,
    GroundingDinoImageProcessor,
    GroundingDinoProcessor,
    OmDetTurboConfig,
    OmDetTurboForObjectDetection,
    OmDetTurboProcessor,
    Owlv2Config,
    Owlv2ForObjectDetection,
    Owlv2ImageProcessor,
    Owlv2Processor,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

__all__ = [
    "COMMON_WORDS",
    "build_bert_tokenizer",
    "build_clip_tokenizer",
    "build_tiny_grounding_dino",
    "build_tiny_omdet_turbo",
    "build_tiny_owlv2",
]

# Whole words that get one token each (the rest are spelled with ## pieces); object names the
# demo ontology and the benchmark use, so their prompts look like real BERT tokenizations.
COMMON_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "on", "in", "with", "and", "or", "person", "people", "man", "woman",
    "child", "car", "truck", "bus", "bicycle", "motorcycle", "dog", "cat", "bird", "horse",
    "forklift", "pallet", "jack", "box", "helmet", "glasses", "red", "blue", "green", "white",
    "black", "small", "large", "automobile", "vehicle", "wearing", "sign", "traffic", "light",
)  # fmt: skip

_BERT_FIRST_CHAR_ID = 999  # bert-base-uncased: "!" is id 999, "." 1012, "?" 1029


def build_bert_tokenizer(
    extra_words: Iterable[str] = (), *, vocab_size: int | None = None
) -> BertTokenizer:
    """A lower-casing WordPiece tokenizer whose special and punctuation ids match bert-base-uncased.

    ``vocab_size`` pads the vocabulary with ``[unusedN]`` entries (e.g. to BERT's 30522, so a
    full-size text embedding has the real shape); it must not be smaller than the built vocabulary.
    """
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"[unused{i}]" for i in range(99, 99 + _BERT_FIRST_CHAR_ID - len(vocab))]
    vocab += [chr(code) for code in range(33, 127) if not chr(code).isupper()]
    vocab += [f"##{char}" for char in string.ascii_lowercase + string.digits]
    seen = set(vocab)
    for word in (*COMMON_WORDS, *extra_words):
        word = word.lower()
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    if vocab_size is not None:
        if vocab_size < len(vocab):
            raise ValueError(f"vocab_size {vocab_size} < the {len(vocab)} tokens built")
        vocab += [f"[unused{i}]" for i in range(len(vocab), vocab_size)]
    assert vocab.index(".") == 1012 and vocab.index("?") == 1029  # what Grounding DINO hard-codes
    return BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)


def build_clip_tokenizer(*, max_length: int = 16) -> CLIPTokenizer:
    """A byte-level BPE tokenizer (no merges: a token per byte) laid out like CLIP's vocabulary."""
    byte_chars = list(bytes_to_unicode().values())  # starts with "!", CLIP's id 0 and OWL's padding
    vocab = [*byte_chars, *(f"{char}</w>" for char in byte_chars)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]  # the highest ids: OWL pools at the argmax id
    return CLIPTokenizer(
        vocab={token: i for i, token in enumerate(vocab)},
        merges=[],
        pad_token="!",
        model_max_length=max_length,
    )


def _tiny_swin_backbone(*, image_size: int) -> dict[str, object]:
    """A one-block-per-stage transformers Swin with 8 channels, feeding three feature levels."""
    return {
        "model_type": "swin",
        "embed_dim": 8,
        "depths": [1, 1, 1, 1],
        "num_heads": [1, 1, 1, 1],
        "window_size": 4,
        "image_size": image_size,
        "out_indices": [2, 3, 4],
    }


def build_tiny_grounding_dino(path: str | Path, *, seed: int = 0, num_queries: int = 40) -> Path:
    """Write a random Grounding DINO checkpoint (model + processor) to ``path`` and return it.

    A one-block-per-stage Swin backbone, a one-layer BERT, ``d_model`` 32 (the smallest its
    GroupNorm(32) allows) and two decoder layers (the box heads are tied across layers, which
    needs at least two). Images are resized to a shortest edge of 64 px, longest 96 px.
    """
    path = Path(path)
    tokenizer = build_bert_tokenizer()
    torch.manual_seed(seed)
    config = GroundingDinoConfig(
        backbone_config=_tiny_swin_backbone(image_size=32),
        text_config=BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=16,
            max_position_embeddings=512,
        ),
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_ffn_dim=16,
        decoder_ffn_dim=16,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_n_points=2,
        decoder_n_points=2,
        num_queries=num_queries,
    )
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_owlv2(path: str | Path, *, seed: int = 0) -> Path:
    """Write a random OWLv2 checkpoint (model + processor) to ``path`` and return it.

    One-layer ViT on 32x32 px images with 8 px patches (16 boxes per image) and a one-layer text
    transformer over at most 16 tokens per query.
    """
    path = Path(path)
    tokenizer = build_clip_tokenizer(max_length=16)
    torch.manual_seed(seed)
    layer = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1}
    config = Owlv2Config(
        text_config={
            **layer,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        vision_config={**layer, "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=32,
    )
    model = Owlv2ForObjectDetection(config).eval()
    image_processor = Owlv2ImageProcessor(size={"height": 32, "width": 32})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def build_tiny_omdet_turbo(path: str | Path, *, seed: int = 0, num_queries: int = 30) -> Path:
    """Write a random OmDet-Turbo checkpoint (model + processor) to ``path`` and return it.

    A transformers Swin backbone (one block per stage; an explicit ``backbone_config`` replaces
    the default timm Swin, which would need timm), a one-layer CLIP text model, encoder and
    decoder width 16 and two decoder layers.
    Images are resized to 64x64 px without padding, like the released checkpoints' 640x640. The
    text model reads 77 tokens because ``OmDetTurboProcessor`` pads to 77 whatever the tokenizer
    says. ``class_embed_dim`` (the text width) differs from ``decoder_hidden_dim`` on purpose:
    transformers only builds the decoder's task projection when they differ, yet always uses it.
    """
    path = Path(path)
    tokenizer = build_clip_tokenizer(max_length=77)
    text_dim = 24
    torch.manual_seed(seed)
    config = OmDetTurboConfig(
        backbone_config=_tiny_swin_backbone(image_size=64),
        # The backbone LayerNorms expect timm's channels-last maps; transformers' Swin backbone
        # returns normalized channels-first maps already.
        apply_layernorm_after_vision_backbone=False,
        text_config={
            "model_type": "clip_text_model",
            "hidden_size": text_dim,
            "intermediate_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "vocab_size": len(tokenizer),
            "max_position_embeddings": 77,
            "pad_token_id": 0,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        },
        text_projection_in_dim=text_dim,
        text_projection_out_dim=text_dim,
        class_embed_dim=text_dim,
        task_encoder_hidden_dim=16,
        image_size=64,
        encoder_in_channels=[16, 32, 64],  # Swin stages 2-4 with embed_dim 8
        vision_features_channels=[16, 16, 16],
        encoder_hidden_dim=16,
        decoder_hidden_dim=16,
        encoder_attention_heads=2,
        decoder_num_heads=2,
        encoder_dim_feedforward=16,
        decoder_dim_feedforward=16,
        decoder_num_layers=2,
        decoder_num_points=2,
        num_queries=num_queries,
    )
    model = OmDetTurboForObjectDetection(config).eval()
    image_processor = DetrImageProcessor(size={"height": 64, "width": 64}, do_pad=False)
    processor = OmDetTurboProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
