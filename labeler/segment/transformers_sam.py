"""SAM and SAM-HQ through transformers, prompted with boxes: one image embedding per image, all of
its boxes in one decoder call, the best-IoU mask of the three multimask outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labeler.core.exceptions import ModelLoadError

__all__ = ["SUPPORTED_MODEL_TYPES", "TransformersSegmenter"]

# model_type -> (model class, processor class) in transformers; both take input_boxes the same way.
SUPPORTED_MODEL_TYPES = {
    "sam": ("SamModel", "SamProcessor"),
    "sam_hq": ("SamHQModel", "SamHQProcessor"),
}


class TransformersSegmenter:
    """A promptable segmenter loaded by hub id or local folder."""

    def __init__(self, model_id: str, *, device: str | None = None) -> None:
        import torch
        import transformers
        from transformers import AutoConfig

        self.model_id = model_id
        where = "local folder" if Path(model_id).exists() else "Hugging Face hub"
        hint = (
            f"download it once (huggingface-cli download {model_id} --local-dir DIR) and pass "
            "--masks transformers:DIR, or set HF_HUB_OFFLINE=1 with it in the hub cache"
        )
        try:
            config = AutoConfig.from_pretrained(model_id)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"segmenter {model_id!r} could not be loaded from the {where}: {error}; {hint}"
            ) from error
        if config.model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(
                f"segmenter {model_id!r} is a {config.model_type!r} model; --masks transformers: "
                f"takes {', '.join(sorted(SUPPORTED_MODEL_TYPES))} checkpoints"
            )
        model_cls, processor_cls = SUPPORTED_MODEL_TYPES[config.model_type]
        try:
            self.processor = getattr(transformers, processor_cls).from_pretrained(model_id)
            model = getattr(transformers, model_cls).from_pretrained(model_id)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"segmenter {model_id!r} could not be loaded from the {where}: {error}; {hint}"
            ) from error
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()

    def segment(self, image: Image.Image, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks (n, height, width) bool in original pixels and their predicted IoU (n,)."""
        import torch

        w, h = image.size
        n = len(xyxy)
        if n == 0:
            return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
        boxes = [[[float(v) for v in box] for box in np.asarray(xyxy, dtype=np.float32)]]
        inputs = self.processor(images=image, input_boxes=boxes, return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        autocast: Any = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        with torch.inference_mode(), autocast:
            # One forward: the vision encoder runs once, the decoder takes all boxes as a batch.
            out = self.model(
                pixel_values=inputs["pixel_values"],
                input_boxes=inputs["input_boxes"],
                multimask_output=True,
            )
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(),
            inputs["original_sizes"].cpu(),
            inputs["reshaped_input_sizes"].cpu(),
        )[0]  # (n, 3, h, w) bool
        iou = out.iou_scores.float().cpu()[0]  # (n, 3)
        best = iou.argmax(dim=-1)
        chosen = masks[torch.arange(n), best].numpy().astype(bool)
        return chosen, iou[torch.arange(n), best].numpy().astype(np.float32)
