from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight SAM with a tiny vision encoder, saved as a checkpoint folder."""
    import torch
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    config = SamConfig(
        vision_config={
            "hidden_size": 32,
            "output_channels": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "global_attn_indexes": [1],
            "mlp_dim": 64,
            "num_pos_feats": 16,
        },
        prompt_encoder_config={"hidden_size": 32},
        mask_decoder_config={"hidden_size": 32, "mlp_dim": 64, "num_attention_heads": 2},
    )
    directory = tmp_path_factory.mktemp("tiny_sam")
    SamModel(config).eval().save_pretrained(directory)
    SamProcessor(SamImageProcessor()).save_pretrained(directory)
    return directory
