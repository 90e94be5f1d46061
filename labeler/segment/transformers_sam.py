"""SAM, SAM-HQ and SAM 2 through transformers, prompted with boxes: one image embedding per image,
all of its boxes in one decoder call, the best-IoU mask of the three multimask outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labeler.core.exceptions import ModelLoadError

__all__ = ["SUPPORTED_MODEL_TYPES", "TransformersSegmenter", "torch_device"]

# model_type -> (model class, processor class) in transformers; all take input_boxes the same way.
# SAM 2's processor resizes without padding, so its masks need no reshaped_input_sizes to crop.
SUPPORTED_MODEL_TYPES = {
    "sam": ("SamModel", "SamProcessor"),
    "sam_hq": ("SamHQModel", "SamHQProcessor"),
    "sam2": ("Sam2Model", "Sam2Processor"),
}


def torch_device(device: str | None) -> str:
    """``None`` or ``"auto"`` (the service's setting) becomes cuda when a GPU is visible, else
    cpu; any other name ("cpu", "cuda:1") is kept."""
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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
        self.device = torch.device(torch_device(device))
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
        iou = out.iou_scores.float().cpu()[0]  # (n, 3)
        best = iou.argmax(dim=-1)
        rows = torch.arange(n)
        # The best of the three chosen at the decoder's resolution, so one mask per box is
        # resized to the image, not three (the resize is per mask: the same pixels either way).
        low_res = out.pred_masks.float().cpu()[:, rows, best][:, :, None]  # (1, n, 1, 256, 256)
        # SAM and SAM-HQ crop their padding off by reshaped_input_sizes; SAM 2 pads none.
        reshaped = inputs.get("reshaped_input_sizes")
        masks = self.processor.image_processor.post_process_masks(
            low_res,
            inputs["original_sizes"].cpu(),
            *([reshaped.cpu()] if reshaped is not None else []),
        )[0]  # (n, 1, h, w) bool
        return masks[:, 0].numpy().astype(bool), iou[rows, best].numpy().astype(np.float32)
