"""Verifier backend for a local vision-language model loaded with transformers.

Any checkpoint that ``AutoProcessor`` and ``AutoModelForImageTextToText`` load and whose processor
has a chat template works (SmolVLM, Qwen2.5-VL, LLaVA, ...). Generation is greedy and runs in a
worker thread, one request at a time; P(yes) comes from the first generated token's logits.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from PIL import Image

from labeler.core.exceptions import ModelLoadError
from labeler.verify.base import DEFAULT_CONCURRENCY, Completion, LoopLocal, VerifierBase
from labeler.verify.parse import ScoredToken, normalize_token
from labeler.verify.templates import DEFAULT_VERIFY_MODE

__all__ = ["TransformersVerifier", "answer_token_ids", "resolve_device"]

logger = logging.getLogger(__name__)

_CROP_MAX_NEW_TOKENS = 4
_MARKS_BASE_TOKENS = 16
_MARKS_TOKENS_PER_BOX = 8
_MARKS_MAX_NEW_TOKENS = 256
_MARKS_TOP_K = 10  # alternatives kept per generated token, for each box's P(yes)


def resolve_device(device: str) -> str:
    """``"auto"`` becomes "cuda" when a CUDA GPU is visible, else "mps" on Apple silicon, else
    "cpu"; any other value is returned as given."""
    if device != "auto":
        return device
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def answer_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids that begin a "yes" and a "no" answer ("yes", "Yes", " yes", "YES", ...).

    Only first tokens that decode to the whole word count, so a tokenizer that splits "yes" into
    "y" + "es" contributes nothing rather than the wrong mass.
    """
    found: dict[str, set[int]] = {"yes": set(), "no": set()}
    unknown_id = getattr(tokenizer, "unk_token_id", None)
    for word, ids in found.items():
        for variant in (word, word.capitalize(), word.upper(), f" {word}", f" {word.capitalize()}"):
            encoded = tokenizer.encode(variant, add_special_tokens=False)
            if not encoded or encoded[0] == unknown_id:
                continue
            if normalize_token(tokenizer.decode([encoded[0]])) == word:
                ids.add(int(encoded[0]))
    return sorted(found["yes"]), sorted(found["no"])


def _load_error(source: str, exc: BaseException) -> ModelLoadError:
    if Path(source).exists():
        where = f"the local folder {source}"
        advice = (
            "check that it holds a transformers vision-language checkpoint saved with "
            "save_pretrained (config.json, processor/tokenizer files with a chat template, weights)"
        )
    else:
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}
        where = "the Hugging Face Hub" + (" (but HF_HUB_OFFLINE is set)" if offline else "")
        advice = (
            f"to use a local copy, download it once (huggingface-cli download {source} "
            f"--local-dir ./models/verifier) and pass --verifier transformers:./models/verifier"
        )
    return ModelLoadError(
        f"cannot load the verifier model {source!r} from {where}: {type(exc).__name__}: {exc}. "
        f"{advice}"
    )


class TransformersVerifier(VerifierBase):
    """A local VLM answering with greedy generation; P(yes) from the first token's logits."""

    def __init__(
        self,
        source: str,
        *,
        mode: str = DEFAULT_VERIFY_MODE,
        concurrency: int = DEFAULT_CONCURRENCY,
        device: str = "auto",
    ) -> None:
        """Load ``source`` (a Hub id or a local folder); raises ModelLoadError when it cannot."""
        super().__init__(model_id=f"transformers:{source}", mode=mode, concurrency=concurrency)
        try:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor
        except ImportError as exc:
            raise ModelLoadError(
                "the transformers verifier needs torch and transformers: "
                "pip install 'promptlabel[label]'"
            ) from exc
        self.source = source
        self.device = resolve_device(device)
        dtype = torch.bfloat16 if self.device == "cuda" and torch.cuda.is_bf16_supported() else None
        # Typed loosely: transformers' processor and model classes are only partly annotated.
        self.processor: Any
        self.model: Any
        try:
            self.processor = AutoProcessor.from_pretrained(source)
            self.model = AutoModelForImageTextToText.from_pretrained(
                source, dtype=dtype or torch.float32
            )
            self.model.to(self.device).eval()
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError, ...
            raise _load_error(source, exc) from exc
        tokenizer = getattr(self.processor, "tokenizer", None)
        if tokenizer is None or getattr(self.processor, "chat_template", None) is None:
            raise ModelLoadError(
                f"the verifier model {source!r} has no tokenizer with a chat template; use an "
                "instruction-tuned vision-language checkpoint (SmolVLM, Qwen2.5-VL, LLaVA, ...)"
            )
        self.tokenizer = tokenizer
        self.yes_token_ids, self.no_token_ids = answer_token_ids(tokenizer)
        if not self.yes_token_ids or not self.no_token_ids:
            logger.warning(
                "verifier %s: no single yes/no tokens in the vocabulary; P(yes) will come from "
                "the parsed text only",
                self.model_id,
            )
        # One generation at a time: the model is not safe to run from several threads, and a
        # second concurrent call would only slow the first.
        self._generate_lock = LoopLocal(asyncio.Lock)

    async def aclose(self) -> None:
        self.model = None

    async def _complete(self, payload: Image.Image, prompt: str, *, marks: int) -> Completion:
        async with self._generate_lock.get():
            return await asyncio.to_thread(self._generate, payload, prompt, marks)

    def _generate(self, image: Image.Image, prompt: str, marks: int) -> Completion:
        import torch

        if self.model is None:
            raise RuntimeError("the verifier was closed")
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
        ]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = self.processor(images=[image], text=[text], return_tensors="pt")
        inputs = {
            key: (
                value.to(self.model.device, dtype=self.model.dtype)
                if torch.is_floating_point(value)
                else value.to(self.model.device)
            )
            for key, value in inputs.items()
        }
        max_new_tokens = (
            min(_MARKS_MAX_NEW_TOKENS, _MARKS_BASE_TOKENS + _MARKS_TOKENS_PER_BOX * marks)
            if marks
            else _CROP_MAX_NEW_TOKENS
        )
        pad_token_id = self.tokenizer.pad_token_id
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_logits=True,
                return_dict_in_generate=True,
                pad_token_id=pad_token_id
                if pad_token_id is not None
                else self.tokenizer.eos_token_id,
            )
        new_tokens = output.sequences[0, inputs["input_ids"].shape[1] :]
        reply = self.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()
        if marks:
            return Completion(text=reply, tokens=self._scored_tokens(new_tokens, output.logits))
        yes_prob = None
        if output.logits and self.yes_token_ids and self.no_token_ids:
            probs = output.logits[0][0].float().softmax(dim=-1)
            yes_mass = float(probs[self.yes_token_ids].sum())
            no_mass = float(probs[self.no_token_ids].sum())
            if yes_mass + no_mass > 0.0:
                yes_prob = yes_mass / (yes_mass + no_mass)
        return Completion(text=reply, yes_prob=yes_prob)

    def _scored_tokens(self, new_tokens: Any, logits: Any) -> tuple[ScoredToken, ...]:
        """Each generated token's text and top alternatives, as an OpenAI server reports them."""
        scored = []
        for token_id, step in zip(new_tokens.tolist(), logits or (), strict=False):
            top = step[0].float().log_softmax(dim=-1).topk(_MARKS_TOP_K)
            # Raw vocabulary entries ("Ġyes", "▁no") are enough for the alternatives:
            # normalize_token strips those markers.
            alternatives = self.tokenizer.convert_ids_to_tokens(top.indices.tolist())
            text = self.tokenizer.decode([token_id], skip_special_tokens=True)
            scored.append((text, list(zip(alternatives, top.values.tolist(), strict=True))))
        return tuple(scored)
