"""Tiny random-weight segmenters saved the way users have them on disk: transformers folders
(``save_pretrained``) and an original-format segment-anything checkpoint (``torch.save`` of a
state_dict). Shared by the mask-stage tests and the worker's."""

from __future__ import annotations

from functools import partial
from pathlib import Path

__all__ = ["save_tiny_sam", "save_tiny_sam2", "save_tiny_sam_checkpoint", "save_tiny_sam_hq"]

_VISION = {
    "hidden_size": 32,
    "output_channels": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "global_attn_indexes": [1],
    "mlp_dim": 64,
    "num_pos_feats": 16,
}
_DECODER = {"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2}


def save_tiny_sam(directory: Path) -> Path:
    """A SAM with a tiny vision encoder and decoder, and its processor."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    config = SamConfig(
        vision_config=_VISION,
        prompt_encoder_config={"hidden_size": 32},
        mask_decoder_config=_DECODER,
    )
    SamModel(config).save_pretrained(directory)
    SamProcessor(SamImageProcessor()).save_pretrained(directory)  # type: ignore[no-untyped-call]
    return directory


def save_tiny_sam_hq(directory: Path) -> Path:
    """A SAM-HQ of the same tiny sizes (its decoder also reads the encoder's width, vit_dim)."""
    import torch
    from transformers import SamHQConfig, SamHQModel, SamHQProcessor, SamImageProcessor

    torch.manual_seed(0)
    config = SamHQConfig(
        vision_config=_VISION,
        prompt_encoder_config={"hidden_size": 32},
        mask_decoder_config={**_DECODER, "vit_dim": 32},
    )
    SamHQModel(config).save_pretrained(directory)
    SamHQProcessor(SamImageProcessor()).save_pretrained(directory)  # type: ignore[no-untyped-call]
    return directory


def save_tiny_sam2(directory: Path) -> Path:
    """A SAM 2 with a tiny Hiera backbone at 256 px input (a quarter of SAM 2's 1024)."""
    import torch
    from transformers import Sam2Config, Sam2ImageProcessor, Sam2Model, Sam2Processor

    torch.manual_seed(0)
    config = Sam2Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam2_hiera_det_model",
                "hidden_size": 8,
                "image_size": [256, 256],
                # Block 3, the second of stage 3, attends globally (a stage's first block pools).
                "blocks_per_stage": [1, 1, 2, 1],
                "embed_dim_per_stage": [8, 16, 32, 64],
                "num_attention_heads_per_stage": [1, 1, 2, 2],
                "window_size_per_stage": [4, 4, 4, 4],
                "global_attention_blocks": [3],
                "window_positional_embedding_background_size": [4, 4],
            },
            "backbone_channel_list": [64, 32, 16, 8],
            "backbone_feature_sizes": [[64, 64], [32, 32], [16, 16]],
            "fpn_hidden_size": 32,
        },
        prompt_encoder_config={"hidden_size": 32, "image_size": 256},
        mask_decoder_config={
            "hidden_size": 32,
            "mlp_dim": 64,
            "num_attention_heads": 2,
            "iou_head_hidden_dim": 32,
        },
    )
    Sam2Model(config).save_pretrained(directory)
    processor = Sam2ImageProcessor(size={"height": 256, "width": 256})
    Sam2Processor(processor).save_pretrained(directory)
    return directory


def save_tiny_sam_checkpoint(path: Path) -> Path:
    """An original-format SAM checkpoint (a bare state_dict, as sam_vit_b_01ec64.pth is) of a
    model built by hand from ``segment_anything.modeling``: 64 px input, 8 px patches, a 2-block
    encoder whose block 1 attends globally, decoder width 32 (8 heads, SAM's convention)."""
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    torch.manual_seed(0)
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
            global_attn_indexes=(1,), window_size=4, out_chans=32,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(8, 8), input_image_size=(64, 64), mask_in_chans=8
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=8),
            transformer_dim=32, iou_head_depth=3, iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )  # fmt: skip
    torch.save(sam.state_dict(), path)
    return path
