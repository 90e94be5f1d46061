"""Segmenter backends loaded through ``load_segmenter``: original segment-anything checkpoints
(architecture read from the weights), SAM-HQ and SAM 2 through transformers."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from labeler.core.exceptions import ModelLoadError
from labeler.segment import load_segmenter
from labeler.segment.segment_anything_backend import (
    REGISTRY_ARCHITECTURES,
    SegmentAnythingSegmenter,
    build_sam,
    sam_architecture,
)
from labeler.segment.transformers_sam import TransformersSegmenter
from tests.labeler.segment.tiny_models import save_tiny_sam_checkpoint

BOXES = np.array([[5, 5, 40, 50], [60, 10, 120, 80], [0, 0, 130, 90], [30, 30, 35, 36]])


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130, 3), np.uint8))


def _record_calls(module: torch.nn.Module) -> list[Any]:
    """Every output ``module`` returns, in order (a forward hook: the model runs as it is)."""
    outputs: list[Any] = []
    module.register_forward_hook(lambda _module, _args, output: outputs.append(output))
    return outputs


# -- segment-anything ------------------------------------------------------------------------------


def test_renamed_tiny_checkpoint_loads_from_its_shapes(tiny_sam_checkpoint: Path) -> None:
    segmenter = load_segmenter(f"segment-anything:{tiny_sam_checkpoint}", device="cpu")
    assert isinstance(segmenter, SegmentAnythingSegmenter)
    assert segmenter.model_type == "custom"  # no release has these sizes
    architecture = segmenter.architecture
    assert (architecture.image_size, architecture.patch_size) == (64, 8)
    assert (architecture.embed_dim, architecture.depth, architecture.num_heads) == (32, 2, 2)
    assert architecture.global_attn_indexes == (1,) and architecture.window_size == 4
    assert architecture.mlp_ratio == 2.0 and architecture.mask_in_chans == 8
    assert (architecture.prompt_embed_dim, architecture.decoder_mlp_dim) == (32, 64)


def test_all_boxes_in_one_encoder_and_one_decoder_call(tiny_sam_checkpoint: Path) -> None:
    segmenter = load_segmenter(f"segment-anything:{tiny_sam_checkpoint}", device="cpu")
    assert isinstance(segmenter, SegmentAnythingSegmenter)
    encoder_calls = _record_calls(segmenter.model.image_encoder)
    decoder_calls = _record_calls(segmenter.model.mask_decoder)
    masks, iou = segmenter.segment(_image(), BOXES)
    assert masks.shape == (4, 90, 130) and masks.dtype == bool
    assert iou.shape == (4,) and iou.dtype == np.float32
    assert len(encoder_calls) == 1 and len(decoder_calls) == 1
    _, decoder_iou = decoder_calls[0]  # (boxes, 3): the three multimask outputs' predicted IoU
    assert decoder_iou.shape == (4, 3)
    assert np.allclose(iou, decoder_iou.max(dim=1).values.numpy())


def test_masks_are_the_sam_predictors_best_of_three(tiny_sam_checkpoint: Path) -> None:
    """Choosing the best mask before upscaling gives what SamPredictor gives after it."""
    segmenter = load_segmenter(f"segment-anything:{tiny_sam_checkpoint}", device="cpu")
    assert isinstance(segmenter, SegmentAnythingSegmenter)
    masks, iou = segmenter.segment(_image(), BOXES)
    predictor = segmenter.predictor
    image = np.asarray(_image().convert("RGB"))
    with torch.inference_mode():
        predictor.set_image(image)
        boxes = predictor.transform.apply_boxes_torch(torch.as_tensor(BOXES), image.shape[:2])
        expected, expected_iou, _ = predictor.predict_torch(None, None, boxes=boxes)
        predictor.reset_image()
    best = expected_iou.argmax(dim=1)
    rows = torch.arange(len(BOXES))
    assert np.array_equal(masks, expected[rows, best].numpy())
    assert np.allclose(iou, expected_iou[rows, best].numpy())


def test_no_boxes_runs_no_model(tiny_sam_checkpoint: Path) -> None:
    segmenter = load_segmenter(f"segment-anything:{tiny_sam_checkpoint}", device="cpu")
    assert isinstance(segmenter, SegmentAnythingSegmenter)
    encoder_calls = _record_calls(segmenter.model.image_encoder)
    masks, iou = segmenter.segment(_image(), np.zeros((0, 4)))
    assert masks.shape == (0, 90, 130) and iou.shape == (0,) and not encoder_calls


@pytest.mark.parametrize("name", ["vit_b", "vit_l", "vit_h"])
def test_released_shapes_are_recognised_and_built_by_the_registry(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segment_anything import sam_model_registry

    built: list[str] = []
    original = sam_model_registry[name]

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(name)
        return original(*args, **kwargs)

    monkeypatch.setitem(sam_model_registry, name, counting)
    with torch.device("meta"):  # shapes without allocating 90M-640M parameters
        released = original()
        architecture = sam_architecture(released.state_dict())
        assert architecture == REGISTRY_ARCHITECTURES[name]
        assert architecture.registry_name == name
        rebuilt = build_sam(architecture)
    assert built == [name]
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in released.state_dict().items()
    }


def test_wrapped_and_data_parallel_checkpoints_load(tmp_path: Path) -> None:
    plain = torch.load(save_tiny_sam_checkpoint(tmp_path / "plain.pth"), weights_only=True)
    wrapped = tmp_path / "finetuned.pth"
    torch.save({"model": {f"module.{k}": v for k, v in plain.items()}, "epoch": 3}, wrapped)
    segmenter = load_segmenter(f"segment-anything:{wrapped}", device="cpu")
    assert isinstance(segmenter, SegmentAnythingSegmenter)
    assert torch.equal(
        segmenter.model.state_dict()["mask_decoder.iou_token.weight"],
        plain["mask_decoder.iou_token.weight"],
    )


def _save(path: Path, state: object) -> Path:
    torch.save(state, path)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _tiny_state(tmp_path: Path) -> dict[str, torch.Tensor]:
    path = save_tiny_sam_checkpoint(tmp_path / "source.pth")
    state: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    return state


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "absent.pth", "not found"),
        (lambda d: _write(d / "garbage.pth", b"\x00not a checkpoint" * 50),
         "not a PyTorch checkpoint"),
        (lambda d: _save(d / "other.pth", {"backbone.conv.weight": torch.zeros(2)}),
         "not an original SAM checkpoint"),
        (lambda d: _save(d / "sam2.pt", {"model": {"image_encoder.trunk.patch_embed.proj.weight":
                                                     torch.zeros(2)}}),
         "SAM 2 checkpoint"),
        (lambda d: _save(d / "list.pth", [1, 2, 3]), "expected a state_dict of tensors"),
        (lambda d: _save(d / "partial.pth", {k: v for k, v in _tiny_state(d).items()
                                              if not k.startswith("mask_decoder.")}),
         "not a complete SAM checkpoint"),
        (lambda d: _save(d / "hq.pth", {**_tiny_state(d), "mask_decoder.hf_token.weight":
                                         torch.zeros(1, 32)}),
         r"\(1 tensors unexpected, e\.g\. mask_decoder\.hf_token\.weight\); a SAM-HQ"),
        (lambda d: _save(d / "reshaped.pth", {**_tiny_state(d), "mask_decoder.iou_token.weight":
                                               torch.zeros(1, 16)}),
         "does not fit SAM .*size mismatch for mask_decoder.iou_token.weight"),
    ],
    ids=["missing", "garbage", "not-sam", "sam2", "not-a-dict", "partial", "sam-hq", "reshaped"],
)  # fmt: skip
def test_bad_checkpoints_name_the_file_and_say_why(tmp_path: Path, make: Any, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ModelLoadError, match=message) as error:
        load_segmenter(f"segment-anything:{path}", device="cpu")
    assert str(path) in str(error.value)


def test_missing_package_says_what_to_install(
    tiny_sam_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # import fails as if absent
    with pytest.raises(ModelLoadError, match=r"pip install 'promptlabel\[label\]'"):
        load_segmenter(f"segment-anything:{tiny_sam_checkpoint}")


def test_pipeline_segments_with_a_segment_anything_checkpoint(
    tmp_path: Path, tiny_sam_checkpoint: Path
) -> None:
    from labeler.demo.synthetic import write_sample_images
    from labeler.pipeline import LabelConfig, run_label
    from tests.labeler.test_pipeline import ONTOLOGY, ScriptedDetector

    write_sample_images(tmp_path / "images", n=2, seed=1)
    config = LabelConfig(
        images_dir=tmp_path / "images", ontology=ONTOLOGY, out_dir=tmp_path / "out",
        detector="scripted", masks=f"segment-anything:{tiny_sam_checkpoint}",
    )  # fmt: skip
    report = run_label(config, detector=ScriptedDetector())  # type: ignore[arg-type]
    assert report["masks"]["computed"] == 6 and report["masks"]["cached"] == 0
    again = run_label(config, detector=ScriptedDetector())  # type: ignore[arg-type]
    assert (again["masks"]["computed"], again["masks"]["cached"]) == (0, 6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_segment_anything_on_cuda_runs_the_encoder_in_fp16(tiny_sam_checkpoint: Path) -> None:
    segmenter = load_segmenter(f"segment-anything:{tiny_sam_checkpoint}", device="cuda")
    assert isinstance(segmenter, SegmentAnythingSegmenter)
    encoder_out = _record_calls(segmenter.model.image_encoder)
    masks, iou = segmenter.segment(_image(), BOXES)
    assert encoder_out[0].dtype == torch.float16  # autocast
    assert masks.shape == (4, 90, 130) and masks.dtype == bool and np.isfinite(iou).all()


# -- transformers: SAM-HQ and SAM 2 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "model_class"),
    [("tiny_sam_hq_dir", "SamHQModel"), ("tiny_sam2_dir", "Sam2Model")],
)
def test_transformers_kin_load_and_batch_all_boxes(
    fixture: str, model_class: str, request: pytest.FixtureRequest
) -> None:
    folder: Path = request.getfixturevalue(fixture)
    segmenter = load_segmenter(f"transformers:{folder}", device="auto")
    assert isinstance(segmenter, TransformersSegmenter)
    assert type(segmenter.model).__name__ == model_class
    encoder_calls = _record_calls(segmenter.model.vision_encoder)
    decoder_calls = _record_calls(segmenter.model.mask_decoder)
    masks, iou = segmenter.segment(_image(), BOXES)
    assert masks.shape == (4, 90, 130) and masks.dtype == bool
    assert len(encoder_calls) == 1 and len(decoder_calls) == 1
    decoder_iou = decoder_calls[0][1].float().cpu()[0]  # (boxes, 3)
    assert decoder_iou.shape == (4, 3)
    assert np.allclose(iou, decoder_iou.max(dim=1).values.numpy(), atol=1e-4)
