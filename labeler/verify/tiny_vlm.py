"""A tiny LLaVA-style VLM built from configs, for tests and the offline demo.

It is saved with ``save_pretrained`` (weights, config, tokenizer with a chat template, image
processor) and loads through the same ``AutoProcessor`` / ``AutoModelForImageTextToText`` path as
a real checkpoint, in well under a second on a CPU. With ``yes_prob`` set, its weights are
arranged so that it always answers yes (or no) with exactly that calibrated P(yes); otherwise
they are random and it says nothing useful.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from labeler.verify.templates import load_template_text

__all__ = ["TINY_IMAGE_PX", "build_tiny_vlm"]

TINY_IMAGE_PX = 32
_PATCH_PX = 8
_HIDDEN = 32
_SPECIAL_TOKENS = ("<pad>", "<unk>", "<s>", "</s>", "<image>")
_BASE_WORDS = ("USER", "ASSISTANT", "yes", "no", "Yes", "No", "a", "an", "this", "is", "Is")
# Llama's RMSNorm maps a residual stream dominated by this constant to sqrt(hidden) in dim 0.
_STEERING_VALUE = 50.0
_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image> "
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def _vocabulary() -> list[str]:
    words = list(_SPECIAL_TOKENS) + list(_BASE_WORDS)
    texts = [load_template_text(name) for name in ("verify_crop.txt", "verify_marks.txt")]
    for text in texts:
        words += re.findall(r"[A-Za-z]+", text)
    words += [str(i) for i in range(1, 21)] + list(".,:;?!\"'{}[]$-")
    return list(dict.fromkeys(words))


def build_tiny_vlm(path: str | Path, *, yes_prob: float | None = None, seed: int = 0) -> Path:
    """Write a tiny LLaVA checkpoint (CLIP vision tower + Llama text model) to ``path``.

    ``yes_prob`` in (0, 1) makes every answer "yes" (if above 0.5, else "no") with that P(yes)
    over the lower-case yes/no tokens; None keeps random weights. Returns ``path``.
    """
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    if yes_prob is not None and not 0.0 < yes_prob < 1.0:
        raise ValueError(f"yes_prob must be inside (0, 1), got {yes_prob}")
    path = Path(path)
    vocab = {word: index for index, word in enumerate(_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.add_special_tokens(list(_SPECIAL_TOKENS))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_PX},
        crop_size={"height": TINY_IMAGE_PX, "width": TINY_IMAGE_PX},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=_PATCH_PX,
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        vision_feature_select_strategy="default",
        chat_template=_CHAT_TEMPLATE,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_IMAGE_PX,
        patch_size=_PATCH_PX,
    )
    text_config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=vocab["<image>"],
        image_seq_length=(TINY_IMAGE_PX // _PATCH_PX) ** 2,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    if yes_prob is not None:
        _steer_to_answer(model, vocab, yes_prob)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def _steer_to_answer(model: object, vocab: dict[str, int], yes_prob: float) -> None:
    """Make the last position's logits depend only on a constant, so the answer is fixed.

    Attention and MLP outputs are zeroed, so the final hidden state is the RMS-normalised token
    embedding; every embedding carries ``_STEERING_VALUE`` in dimension 0, which normalises to
    about sqrt(hidden). The LM head reads only that dimension: -2 for every token, and yes/no
    rows set so that logit(yes) - logit(no) = log(yes_prob / (1 - yes_prob)).
    """
    import torch

    language_model = model.model.language_model  # type: ignore[attr-defined]
    with torch.no_grad():
        for layer in language_model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = language_model.embed_tokens.weight
        embeddings[:, 0] = _STEERING_VALUE
        normalised = language_model.norm(embeddings[vocab["ASSISTANT"]].unsqueeze(0))[0, 0]
        head = model.lm_head.weight  # type: ignore[attr-defined]
        head.zero_()
        head[:, 0] = -2.0
        gap = math.log(yes_prob / (1.0 - yes_prob)) / float(normalised)
        head[vocab["yes"], 0] = 2.0 + gap / 2
        head[vocab["no"], 0] = 2.0 - gap / 2
