"""The exporter's and the device runtime's one metadata contract."""

from __future__ import annotations

import pytest

from distill.model_metadata import (
    REQUIRED_METADATA,
    ModelMetadata,
    check_required_metadata,
    metadata_values,
    parse_metadata,
)
from labeler.core.exceptions import ModelLoadError

GOOD_METADATA = {
    "names": "{0: 'circle', 1: 'square'}",
    "imgsz": "[256, 320]",
    "stride": "32",
    "task": "detect",
    "batch": "1",
    "end2end": "False",
    "args": "{'batch': 1, 'nms': None, 'dynamic': True}",
}


def test_parse_metadata() -> None:
    metadata = parse_metadata(GOOD_METADATA, source="m.onnx")
    assert metadata == ModelMetadata(
        names=("circle", "square"), imgsz=(256, 320), stride=32, task="detect", dynamic=True
    )
    minimal = {key: GOOD_METADATA[key] for key in REQUIRED_METADATA}
    assert parse_metadata(minimal).end2end is False
    assert parse_metadata({**minimal, "args": "{'nms': True}"}).end2end is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"names": None}, "lacks Ultralytics metadata \\['names'\\]"),
        ({"names": "__import__('os').system('echo hi')"}, "'names' is not a Python literal"),
        ({"names": "{}"}, "non-empty dict"),
        ({"names": "{0: 'a', 2: 'b'}"}, "number classes 0..1"),
        ({"names": "{'a': 'b'}"}, "keys must be class indices"),
        ({"imgsz": "[640]"}, "'imgsz' must be \\[height, width\\]"),
        ({"imgsz": "[640, -1]"}, "'imgsz' must be"),
        ({"stride": "thirty-two"}, "'stride' and 'batch' must be integers"),
        ({"stride": "0"}, "must be >= 1"),
    ],
)
def test_parse_metadata_rejects(change: dict[str, str | None], message: str) -> None:
    props = {k: v for k, v in {**GOOD_METADATA, **change}.items() if v is not None}
    with pytest.raises(ModelLoadError, match=message) as caught:
        parse_metadata(props, source="student.onnx")
    assert "student.onnx" in str(caught.value)


def test_parse_metadata_accepts_an_imgsz_int_and_names_list() -> None:
    props = {**GOOD_METADATA, "imgsz": "320", "names": "['a', 'b']"}
    metadata = parse_metadata(props)
    assert metadata.imgsz == (320, 320) and metadata.names == ("a", "b")


def test_parse_metadata_takes_values_already_parsed() -> None:
    """A TensorRT engine's header is JSON: values arrive as Python values, class ids as strings."""
    props = {"names": {"0": "a", "1": "b"}, "imgsz": [320, 320], "stride": 32, "task": "detect"}
    metadata = parse_metadata(props, source="m.engine")
    assert metadata.names == ("a", "b") and metadata.imgsz == (320, 320)


def test_metadata_values_never_raises() -> None:
    values = metadata_values({**GOOD_METADATA, "description": "Ultralytics YOLO11n model"})
    assert values["names"] == {0: "circle", 1: "square"}
    assert values["imgsz"] == [256, 320]
    assert values["description"] == "Ultralytics YOLO11n model"


def test_check_required_metadata_names_the_file_and_the_fix() -> None:
    with pytest.raises(ModelLoadError) as caught:
        check_required_metadata({"names": "{0: 'a'}"}, source="bare.onnx")
    text = str(caught.value)
    assert text.startswith("bare.onnx: lacks Ultralytics metadata ['imgsz', 'stride', 'task']")
    assert "promptlabel export" in text
