"""Original SAM checkpoints (``--masks segment-anything:CHECKPOINT.pth``) through Meta's
``segment-anything`` package: one image embedding per image (``SamPredictor.set_image``), all of its
boxes in one batched ``predict_torch`` call, the best-IoU mask of the three multimask outputs.

The checkpoint is a bare ``state_dict``; the architecture is read from its tensor shapes, never from
the file name, so a renamed ``sam_vit_b_01ec64.pth`` loads, and so does any other size:

- image encoder: embed dim and patch size from ``patch_embed.proj.weight``, image size from
  ``pos_embed``, depth from the ``blocks.N`` keys, heads from ``embed_dim / rel_pos_h.shape[1]``
  (the relative-position tables hold one row set per head dim), MLP ratio from ``mlp.lin1``, output
  channels from ``neck.0``;
- global-attention blocks: a block whose ``rel_pos_h`` spans the whole token grid
  (``2 * grid - 1`` rows) attends globally; the others are windowed, and their table gives the
  window (``2 * window - 1`` rows). When the window equals the grid the two are the same
  computation, and every block is taken as global;
- prompt encoder and mask decoder: widths, depths and the number of multimask outputs from their
  weights. The decoder's attention heads are the one thing no shape records: the convention is 8,
  the value of every SAM release.

Shapes equal to ``vit_b``, ``vit_l`` or ``vit_h`` build through ``sam_model_registry``; any other
shape (a tiny test model, a distilled encoder) is built from ``segment_anything.modeling`` with
the same constructor arguments ``sam_model_registry`` uses.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from labeler.core.exceptions import ModelLoadError
from labeler.segment.transformers_sam import torch_device

__all__ = [
    "REGISTRY_ARCHITECTURES",
    "SamArchitecture",
    "SegmentAnythingSegmenter",
    "sam_architecture",
]

INSTALL_HINT = "pip install 'promptlabel[label]'"
# SAM's mask decoder heads: not recorded in any weight shape (see the module docstring).
DECODER_NUM_HEADS = 8
_PATCH_EMBED = "image_encoder.patch_embed.proj.weight"


@dataclass(frozen=True)
class SamArchitecture:
    """What ``segment_anything``'s ``_build_sam`` needs to rebuild a checkpoint's model."""

    image_size: int
    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    qkv_bias: bool
    window_size: int
    global_attn_indexes: tuple[int, ...]
    prompt_embed_dim: int
    mask_in_chans: int
    decoder_depth: int
    decoder_mlp_dim: int
    num_multimask_outputs: int
    iou_head_depth: int
    iou_head_hidden_dim: int
    decoder_num_heads: int = DECODER_NUM_HEADS

    @property
    def registry_name(self) -> str | None:
        """``vit_b``, ``vit_l`` or ``vit_h`` when ``sam_model_registry`` builds exactly this."""
        return next((n for n, a in REGISTRY_ARCHITECTURES.items() if a == self), None)


def _released(
    embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]
) -> SamArchitecture:
    return SamArchitecture(
        image_size=1024, patch_size=16, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
        mlp_ratio=4.0, qkv_bias=True, window_size=14, global_attn_indexes=global_attn,
        prompt_embed_dim=256, mask_in_chans=16, decoder_depth=2, decoder_mlp_dim=2048,
        num_multimask_outputs=3, iou_head_depth=3, iou_head_hidden_dim=256,
    )  # fmt: skip


# As segment_anything/build_sam.py builds them.
REGISTRY_ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": _released(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": _released(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": _released(1280, 32, 16, (7, 15, 23, 31)),
}


def _count(state_dict: dict[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    return max(found) + 1 if found else 0


def sam_architecture(state_dict: dict[str, Any], *, source: str = "checkpoint") -> SamArchitecture:
    """The architecture a SAM ``state_dict`` was saved from, read from its tensor shapes;
    ModelLoadError naming ``source`` when it is not an original-format SAM checkpoint."""
    if _PATCH_EMBED not in state_dict:
        raise ModelLoadError(_not_sam_message(state_dict, source))
    try:
        patch = state_dict[_PATCH_EMBED].shape  # (embed_dim, 3, patch, patch)
        embed_dim, patch_size = int(patch[0]), int(patch[-1])
        grid = int(state_dict["image_encoder.pos_embed"].shape[1])  # (1, grid, grid, embed_dim)
        depth = _count(state_dict, "image_encoder.blocks.")
        rel_rows = [
            int(state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape[0])
            for i in range(depth)
        ]
        head_dim = int(state_dict["image_encoder.blocks.0.attn.rel_pos_h"].shape[1])
        global_attn = tuple(i for i, rows in enumerate(rel_rows) if rows == 2 * grid - 1)
        windowed = {rows for rows in rel_rows if rows != 2 * grid - 1}
        if len(windowed) > 1:
            raise ModelLoadError(
                f"{source}: image encoder blocks use several window sizes {sorted(windowed)}; "
                "segment-anything builds one"
            )
        window_size = (windowed.pop() + 1) // 2 if windowed else grid
        mlp_dim = int(state_dict["image_encoder.blocks.0.mlp.lin1.weight"].shape[0])
        prompt_embed_dim = int(state_dict["image_encoder.neck.0.weight"].shape[0])
        architecture = SamArchitecture(
            image_size=grid * patch_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=embed_dim // head_dim,
            mlp_ratio=mlp_dim / embed_dim,
            qkv_bias="image_encoder.blocks.0.attn.qkv.bias" in state_dict,
            window_size=window_size,
            global_attn_indexes=global_attn,
            prompt_embed_dim=prompt_embed_dim,
            mask_in_chans=int(state_dict["prompt_encoder.mask_downscaling.3.weight"].shape[0]),
            decoder_depth=_count(state_dict, "mask_decoder.transformer.layers."),
            decoder_mlp_dim=int(
                state_dict["mask_decoder.transformer.layers.0.mlp.lin1.weight"].shape[0]
            ),
            num_multimask_outputs=int(state_dict["mask_decoder.mask_tokens.weight"].shape[0]) - 1,
            iou_head_depth=_count(state_dict, "mask_decoder.iou_prediction_head.layers."),
            iou_head_hidden_dim=int(
                state_dict["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0]
            ),
        )
    except KeyError as error:
        raise ModelLoadError(
            f"{source}: not a complete SAM checkpoint (no tensor {error.args[0]!r}); "
            "segment-anything: takes the .pth files of facebookresearch/segment-anything"
        ) from None
    # The cross-attention runs at half width: both widths must split into the decoder's heads.
    if (prompt_embed_dim // 2) % DECODER_NUM_HEADS:
        raise ModelLoadError(
            f"{source}: mask decoder width {prompt_embed_dim} does not split into "
            f"{DECODER_NUM_HEADS} heads at half width, as SAM's decoder does"
        )
    return architecture


def _not_sam_message(state_dict: dict[str, Any], source: str) -> str:
    keys = list(state_dict)
    if any(k.startswith("image_encoder.trunk.") for k in keys):
        hint = "a SAM 2 checkpoint? use --masks transformers:facebook/sam2.1-hiera-*"
    elif any(k.startswith("image_encoder.layers.") for k in keys):
        hint = "a MobileSAM (TinyViT) checkpoint? segment-anything cannot build those"
    else:
        sample = ", ".join(keys[:3]) or "none"
        hint = f"no {_PATCH_EMBED} (first keys: {sample})"
    return (
        f"{source}: not an original SAM checkpoint ({hint}); segment-anything: takes the .pth "
        "files of facebookresearch/segment-anything (sam_vit_b_01ec64.pth, ...)"
    )


def _read_state_dict(path: Path) -> dict[str, Any]:
    """The checkpoint's tensors by name: a bare state_dict, or one wrapped under "model" /
    "state_dict" (fine-tuning scripts save them so), with any DataParallel "module." prefix off."""
    import torch

    if not path.is_file():
        raise ModelLoadError(
            f"segment-anything checkpoint {str(path)!r} not found; download one from "
            "https://github.com/facebookresearch/segment-anything#model-checkpoints"
        )
    try:
        # weights_only: a checkpoint is data, never code to run; map to CPU so a file saved on a
        # GPU loads on a machine without one.
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a file that is not a checkpoint
        # Not torch's own text: for a file of garbage it suggests weights_only=False.
        raise ModelLoadError(
            f"{path}: not a PyTorch checkpoint of plain tensors (torch.load with "
            f"weights_only=True raised {type(error).__name__}); segment-anything: takes the .pth "
            "files of facebookresearch/segment-anything"
        ) from error
    for wrapper in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            loaded = loaded[wrapper]
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise ModelLoadError(f"{path}: not a SAM checkpoint (expected a state_dict of tensors)")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def build_sam(architecture: SamArchitecture) -> Any:
    """A randomly initialised ``segment_anything`` Sam of this architecture."""
    import torch
    from segment_anything import sam_model_registry
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    if architecture.registry_name is not None:
        return sam_model_registry[architecture.registry_name]()
    a = architecture
    grid = a.image_size // a.patch_size
    # The arguments of segment_anything.build_sam._build_sam, with the checkpoint's sizes.
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=a.depth, embed_dim=a.embed_dim, img_size=a.image_size, mlp_ratio=a.mlp_ratio,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=a.num_heads,
            patch_size=a.patch_size, qkv_bias=a.qkv_bias, use_rel_pos=True,
            global_attn_indexes=a.global_attn_indexes, window_size=a.window_size,
            out_chans=a.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=a.prompt_embed_dim, image_embedding_size=(grid, grid),
            input_image_size=(a.image_size, a.image_size), mask_in_chans=a.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=a.num_multimask_outputs,
            transformer=TwoWayTransformer(
                depth=a.decoder_depth, embedding_dim=a.prompt_embed_dim,
                mlp_dim=a.decoder_mlp_dim, num_heads=a.decoder_num_heads,
            ),
            transformer_dim=a.prompt_embed_dim, iou_head_depth=a.iou_head_depth,
            iou_head_hidden_dim=a.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()  # fmt: skip


class SegmentAnythingSegmenter:
    """A SAM loaded from an original-format checkpoint file."""

    def __init__(self, checkpoint: str | Path, *, device: str | None = None) -> None:
        import torch

        try:
            from segment_anything import SamPredictor
        except ImportError:
            raise ModelLoadError(
                "--masks segment-anything: needs the segment-anything package: " + INSTALL_HINT
            ) from None
        self.checkpoint = Path(checkpoint)
        state_dict = _read_state_dict(self.checkpoint)
        self.architecture = sam_architecture(state_dict, source=str(self.checkpoint))
        # The name says which of SAM's releases this is (a renamed file included), or "custom".
        self.model_type = self.architecture.registry_name or "custom"
        sam = build_sam(self.architecture)
        hint = (
            "; a SAM-HQ checkpoint? use --masks transformers:syscv-community/sam-hq-vit-base "
            "(or -large, -huge)"
            if any(k.startswith("mask_decoder.hf_") for k in state_dict)
            else ""
        )
        try:
            missing, unexpected = sam.load_state_dict(state_dict, strict=False)
        except RuntimeError as error:  # a tensor of the wrong shape: torch names it on line 2
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            raise ModelLoadError(
                f"{self.checkpoint}: does not fit SAM ({lines[-1] if lines else error}){hint}"
            ) from None
        if missing or unexpected:
            found = [
                f"{len(names)} tensors {what}, e.g. {', '.join(names[:2])}"
                for names, what in ((missing, "missing"), (unexpected, "unexpected"))
                if names
            ]
            raise ModelLoadError(f"{self.checkpoint}: does not fit SAM ({'; '.join(found)}){hint}")
        self.device = torch.device(torch_device(device))
        self.model = sam.to(self.device).eval()
        self.predictor = SamPredictor(self.model)
        # The predictor holds one image's embedding between set_image and predict_torch: one
        # image at a time per segmenter, however many threads share it.
        self._lock = threading.Lock()

    def segment(self, image: Image.Image, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks (n, height, width) bool in original pixels and their predicted IoU (n,)."""
        import torch

        w, h = image.size
        n = len(xyxy)
        if n == 0:
            return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
        pixels = np.asarray(image.convert("RGB"))
        autocast: Any = (
            torch.autocast("cuda", dtype=torch.float16)
            if self.device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )
        boxes = torch.as_tensor(np.asarray(xyxy, dtype=np.float32), device=self.device)
        model, predictor = self.model, self.predictor
        with self._lock, torch.inference_mode(), autocast:
            predictor.set_image(pixels)  # the image encoder, once
            try:
                transformed = predictor.transform.apply_boxes_torch(boxes, (h, w))
                # SamPredictor.predict_torch, except that the best of the three masks is chosen
                # at the decoder's 256x256 before upscaling, so one mask per box is resized
                # to the image, not three. One decoder pass takes all boxes as a batch.
                sparse, dense = model.prompt_encoder(points=None, boxes=transformed, masks=None)
                low_res, iou = model.mask_decoder(
                    image_embeddings=predictor.features,
                    image_pe=model.prompt_encoder.get_dense_pe(),
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )
                iou = iou.float()
                best = iou.argmax(dim=1)
                rows = torch.arange(n, device=best.device)
                logits = model.postprocess_masks(
                    low_res[rows, best][:, None], predictor.input_size, predictor.original_size
                )
            finally:
                predictor.reset_image()  # do not keep the embedding past this image
        chosen = (logits[:, 0] > model.mask_threshold).cpu().numpy()
        return chosen, iou[rows, best].cpu().numpy().astype(np.float32)
