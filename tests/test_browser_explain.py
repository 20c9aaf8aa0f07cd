"""Page 6 and the dataset map in a real browser (headless Chromium through Playwright), with a trained run.

A tiny EfficientNet-Lite0 head run from ImageNet weights and its fine-tuned twin are trained before the server
starts; the test
uploads a photo on page 6, checks the head-only run and its fine-tuned twin side by side with their difference, switches every method,
then opens the dataset map, hovers over a point (a tooltip) and clicks one (its image is shown).
Screenshots land in ``artifacts/screenshots/explain-*.png`` (ignored by git).
"""

from __future__ import annotations

import io
import os
import time

import pytest

from core.config import RunConfig
from core.explain.heatmaps import METHODS
from core.store.folders import Store
from core.training.train import train
from tests.apphelpers import streamlit_server
from tests.browserkit import BAD_TEXT, CHROMIUM, CHROMIUM_ARGS, SHOTS, go, settle, wider_than_container
from tests.conftest import make_dataset, make_image

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def tab(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    from playwright.sync_api import sync_playwright

    tmp = tmp_path_factory.mktemp("browser-explain")
    data = make_dataset(tmp / "tiny")
    cfg = RunConfig(backbone="efficientnet_lite0", weights="imagenet", phase="head", image_size=32, epochs=2,
                    batch_size=8, val_fraction=0.25)  # fmt: skip
    train(cfg, data, Store(tmp / "artifacts"))
    train(cfg.replace(phase="head+full", full_epochs=1), data, Store(tmp / "artifacts"))  # its fine-tuned twin
    env = dict(os.environ, SCENELAB_DATA=str(data), SCENELAB_ARTIFACTS=str(tmp / "artifacts"), TF_CPP_MIN_LOG_LEVEL="2")
    with streamlit_server(env, tmp / "streamlit.log") as (_proc, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_context(viewport={"width": 1400, "height": 1000}).new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        settle(page)
        yield page
        browser.close()


def main_text(tab) -> str:
    text = tab.locator('[data-testid="stMain"]').inner_text()
    for bad in BAD_TEXT:
        assert bad not in text, f"{bad!r} on the page:\n{text[:2000]}"
    return text


def test_page_6_before_and_after_and_the_dataset_map(tab):
    t0 = time.monotonic()
    go(tab, "6 Activations")
    tab.get_by_text("Upload a photo").click()
    settle(tab)
    buf = io.BytesIO()
    make_image("coast", 7, size=96).save(buf, format="JPEG")
    tab.locator('[data-testid="stMain"] input[type="file"]').set_input_files(
        files=[{"name": "coast.jpg", "mimeType": "image/jpeg", "buffer": buf.getvalue()}]
    )
    # the difference map's caption: only drawn once both maps are computed (the page's introduction also says
    # "what fine-tuning changed", and get_by_text ignores case, so waiting on that returned at once)
    tab.get_by_text("After − before, both for").first.wait_for(timeout=120_000)
    settle(tab, timeout_s=120)
    text = main_text(tab)
    for words in ("Before: head only, backbone frozen", "After: fine-tuned (head, then the whole network)",
                  "coast.jpg, as the model sees it", "After − before, both for"):  # fmt: skip
        assert words in text, words
    assert tab.locator('[data-testid="stMain"] [data-testid="stVegaLiteChart"]').count() == 2  # both predictions
    assert not wider_than_container(tab)
    SHOTS.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(SHOTS / "explain-page6.png"))
    method_radio = tab.locator('[data-testid="stMain"] [data-testid="stRadio"]').filter(has_text="Grad-CAM++")
    for method in ("gradcam++", "scorecam", "occlusion", "gradcam"):
        method_radio.get_by_text(METHODS[method], exact=True).click()
        tab.get_by_text(f"{METHODS[method]} of ").first.wait_for(timeout=60_000)
        settle(tab)
        main_text(tab)
    print(f"page 6: {time.monotonic() - t0:.0f} s")

    go(tab, "Dataset map")
    charts = tab.locator('[data-testid="stMain"] [data-testid="stVegaLiteChart"]')
    charts.nth(1).wait_for(timeout=120_000)
    text = main_text(tab)
    assert "Before: frozen EfficientNet-Lite0" in text and "After: fine-tuned run" in text
    assert not wider_than_container(tab)
    tab.screenshot(path=str(SHOTS / "explain-map.png"))
    picked = hover_and_click_a_point(tab, charts.first)
    assert picked, "no point of the map answered a click"
    tab.screenshot(path=str(SHOTS / "explain-map-picked.png"))
    print(f"page 6 and the map: {time.monotonic() - t0:.0f} s")


def hover_and_click_a_point(tab, chart) -> bool:
    """Move over a point of the chart until a tooltip shows its class, then click it; True when the page
    then shows that image (its file name and true class). Vega draws few points as SVG (their positions
    are read from the marks) and many on a canvas (a grid of positions is tried)."""
    marks = chart.locator("g.mark-symbol path")
    if marks.count():
        boxes = [marks.nth(i).bounding_box() for i in range(min(8, marks.count()))]
        spots = [(b["x"] + b["width"] / 2, b["y"] + b["height"] / 2) for b in boxes if b]
    else:
        box = chart.bounding_box()
        assert box is not None
        spots = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"] * 0.7)  # legends lie below
                 for fy in (0.5, 0.4, 0.6, 0.3, 0.7) for fx in (0.5, 0.4, 0.6, 0.3, 0.7, 0.45, 0.55)]  # fmt: skip
    tooltip = tab.locator("#vg-tooltip-element")
    for x, y in spots:
        tab.mouse.move(x, y)
        tab.wait_for_timeout(150)
        if tooltip.count() and tooltip.is_visible() and "true class" in tooltip.inner_text():
            tab.mouse.click(x, y)
            settle(tab)
            try:
                tab.get_by_text("image · true class").first.wait_for(timeout=20_000)
            except Exception:
                continue
            return True
    return False
