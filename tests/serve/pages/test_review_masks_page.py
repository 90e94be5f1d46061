"""Masks on the review page, in a real browser: the item's mask and its image's other masks are
painted over the image in their boxes' colours, and M hides and shows them.

``PROMPTLABEL_SCREENSHOTS=1`` also writes the README's picture (docs/images/review-masks.png)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from serve.api.local_review import create_local_review_app
from serve.settings import ServiceSettings
from tests.fakes.live_app import LiveApp
from tests.serve.api.test_review_masks import label_with_masks

# The mask layer's pixel at an image point (image pixels), [r, g, b, a], and whether it is shown.
_MASK_PIXEL = """([x, y]) => {
  const stage = Konva.stages[0];
  const layer = stage.findOne('.masks');
  const image = stage.findOne('.image').getChildren()[0];
  const at = image.width() / image.image().naturalWidth * layer.getCanvas().getPixelRatio();
  const context = layer.getCanvas().getContext()._context;
  const pixel = context.getImageData(Math.round(x * at), Math.round(y * at), 1, 1).data;
  return { rgba: Array.from(pixel), visible: layer.isVisible() };
}"""

# The current box in image pixels, from Konva's own node.
_CURRENT_XYXY = """() => {
  const stage = Konva.stages[0];
  const image = stage.findOne('.image').getChildren()[0];
  const scale = image.width() / image.image().naturalWidth;
  const rect = stage.findOne('.current');
  const xyxy = [rect.x(), rect.y(), rect.x() + rect.width(), rect.y() + rect.height()];
  return xyxy.map((v) => v / scale);
}"""

SCREENSHOT = Path(__file__).resolve().parents[3] / "docs" / "images" / "review-masks.png"


def _rgb(hex_color: str) -> list[int]:
    return [int(hex_color[i : i + 2], 16) for i in (1, 3, 5)]


@pytest.mark.slow
def test_masks_are_painted_over_their_boxes_and_m_toggles_them(tmp_path: Path, page: Any) -> None:
    app = create_local_review_app(
        label_with_masks(tmp_path), reviewer="ana", settings=ServiceSettings()
    )
    with LiveApp(app) as live:
        page.goto(live.url("/review/"))
        page.wait_for_function("document.body.dataset.item && document.body.dataset.masks")
        x1, y1, x2, y2 = page.evaluate(_CURRENT_XYXY)
        assert page.evaluate("document.body.dataset.masks") == "3"  # its own and two others
        assert page.locator("#masks-button").is_visible()
        # Inside the item's quarter mask: the current box's blue; in the rest of its box: none.
        inside = page.evaluate(_MASK_PIXEL, [x1 + (x2 - x1) / 8, y1 + (y2 - y1) / 8])
        assert inside["visible"] and inside["rgba"][3] > 0
        assert _close(inside["rgba"][:3], _rgb("#1f6feb"))
        outside = page.evaluate(_MASK_PIXEL, [x1 + (x2 - x1) * 0.75, y1 + (y2 - y1) * 0.75])
        assert outside["rgba"][3] == 0
        # The first box of the image (accepted, its mask fills it) in the accepted colour.
        first = page.evaluate(_MASK_PIXEL, [2, 2])
        assert first["rgba"][3] > 0 and _close(first["rgba"][:3], _rgb("#2e9e4f"))

        if os.environ.get("PROMPTLABEL_SCREENSHOTS"):
            page.screenshot(path=str(SCREENSHOT))

        page.keyboard.press("m")
        page.wait_for_function("document.body.dataset.masksShown === 'false'")
        assert not page.evaluate(_MASK_PIXEL, [2, 2])["visible"]
        assert page.get_attribute("#masks-button", "aria-pressed") == "false"
        page.keyboard.press("m")
        page.wait_for_function("document.body.dataset.masksShown === 'true'")
        assert page.evaluate(_MASK_PIXEL, [2, 2])["visible"]


def _close(rgb: list[int], expected: list[int]) -> bool:
    # Premultiplied alpha in the canvas rounds colours a little.
    return all(abs(a - b) <= 3 for a, b in zip(rgb, expected, strict=True))
