"""The app in a real browser (headless Chromium through Playwright), as a user at a 1400x1000 laptop uses it.

One ``streamlit run app.py`` on a tiny generated dataset serves every test of this module, in order:
Train pressed at once on a fresh session (sidebar, run and page agree), retraining from the sidebar after
changing the image size, a copied link opened in another browser, a run trained on every task page (no
chart wider than its container, the first result above the fold), and a zip uploaded in the sidebar that
becomes the dataset and trains. Screenshots land in ``artifacts/screenshots/`` (ignored by git).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
import zipfile

import pytest

from core.models.backbones import BACKBONES
from tests.apphelpers import streamlit_server
from tests.browserkit import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LAPTOP,
    assert_clean,
    go,
    main_text,
    metric,
    need_browser,
    settle,
    shoot,
    sidebar_button,
    sidebar_text,
    wider_than_container,
)
from tests.conftest import make_dataset, make_image

pytestmark = pytest.mark.browser

TASK_PAGES = {  # navigation title -> page key, for the pages with the sidebar's train panel
    "1 Truncate": "truncate",
    "2 Small data": "small_data",
    "3 Augmentation": "augmentation",
    "4 Regularisation": "regularisation",
}
OTHER_PAGES = {"Study": "study", "5 Hyperparameter search": "search", "6 Activations": "activations",
               "Dataset map": "dataset_map", "Runs": "runs"}  # fmt: skip
TRAIN_TIMEOUT_MS = 300_000
LINKS: dict[str, str] = {}  # what one test leaves for the next (tests of this module run in order)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    tmp = tmp_path_factory.mktemp("browser")
    data = make_dataset(tmp / "tiny")
    env = dict(os.environ, SCENELAB_DATA=str(data), SCENELAB_ARTIFACTS=str(tmp / "artifacts"),
               SCENELAB_DATA_ROOTS=str(tmp), TF_CPP_MIN_LOG_LEVEL="2")  # fmt: skip
    with streamlit_server(env, tmp / "streamlit.log", timeout=90) as (_proc, url):
        yield url, tmp


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def new_tab(browser):
    tab = browser.new_context(viewport=LAPTOP).new_page()
    tab.set_default_timeout(60_000)
    return tab


@pytest.fixture(scope="module")
def tab(browser):
    return new_tab(browser)


def wait_for_result(tab, page: str, name: str | None = None) -> None:
    """Wait until every run of the page has finished (no Cancel button in the sidebar) and the result strip
    shows a test accuracy (the poll redraws the page when a run is done)."""
    try:
        metric(tab, "Test accuracy").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
        cancel = tab.locator(f".st-key-{page}_cancel")
        for _ in range(10):  # a plan of several runs: Cancel leaves for a moment between two of them
            cancel.wait_for(state="detached", timeout=TRAIN_TIMEOUT_MS)
            settle(tab, timeout_s=120)
            tab.wait_for_timeout(2500)
            if cancel.count() == 0:
                break
        metric(tab, "Test accuracy").first.wait_for(timeout=30_000)
    except Exception:
        shoot(tab, f"{name or page}-failed")
        raise AssertionError(f"{name or page}: no result after training:\n{main_text(tab)[:3000]}") from None


def sidebar_backbone(tab) -> str:
    return tab.locator('[data-testid="stSidebar"] input[aria-label="Backbone"]').input_value()


def sidebar_size(tab) -> int:
    return int(tab.locator('[data-testid="stSidebar"] [data-testid="stSliderThumbValue"]').first.inner_text())


def caption_size(tab) -> int:
    sizes = re.findall(r"(\d+) px · run", main_text(tab))
    assert sizes, f"no result caption with an image size:\n{main_text(tab)[:2000]}"
    return int(sizes[0])


def first_result_above_the_fold(tab, name: str) -> None:
    tab.evaluate("window.scrollTo(0, 0)")
    box = metric(tab, "Test accuracy").first.bounding_box()
    if box is None or box["y"] + box["height"] > LAPTOP["height"]:
        shoot(tab, f"{name}-fold", full_page=False)
    assert box is not None and box["y"] + box["height"] <= LAPTOP["height"], f"{name}: the first result is at {box}"


def test_train_pressed_at_once_on_a_fresh_session(server, tab):
    url, _tmp = server
    tab.goto(f"{url}/finetune")  # a deep link is the fresh server's first visit
    button = sidebar_button(tab, "finetune")
    button.wait_for()
    button.click()  # at once: the sidebar may still be drawing
    wait_for_result(tab, "finetune")
    first_result_above_the_fold(tab, "finetune")
    tab.wait_for_timeout(3000)  # a late rerun would have changed the settings by now (issue 12)
    settle(tab)
    text, side = main_text(tab), sidebar_text(tab)
    trained = [name for name, spec in BACKBONES.items() if f" {spec.label} (imagenet weights)" in text]
    assert len(trained) == 1, text[:2000]
    assert BACKBONES[trained[0]].label in sidebar_backbone(tab), (trained, sidebar_backbone(tab))
    assert caption_size(tab) == sidebar_size(tab)
    for words in ("not cached", "could not be downloaded"):
        assert words not in text and words not in side, words
    assert "run `" not in text  # markdown rendered, not raw
    assert "Retrain" in button.inner_text()
    shown_equals_stored(tab, _tmp / "artifacts", "finetune")  # page 0's figures are the stored run's
    assert_clean(tab, "finetune")
    assert not wider_than_container(tab)
    shoot(tab, "finetune")


def test_retrain_from_the_sidebar_after_changing_the_image_size(tab):
    before = sidebar_size(tab)
    slider = tab.locator('[data-testid="stSidebar"] input[type="range"][aria-label="Image size (px)"]')
    slider.focus()
    slider.press("ArrowRight")
    settle(tab)
    after = sidebar_size(tab)
    assert after > before
    assert "Not trained yet with these settings." in sidebar_text(tab)
    assert sidebar_button(tab, "finetune").inner_text().strip().endswith("Train")
    sidebar_button(tab, "finetune").click()
    wait_for_result(tab, "finetune", "finetune-retrain")
    assert caption_size(tab) == after
    first_result_above_the_fold(tab, "finetune-retrain")
    LINKS["trained"] = tab.url
    assert f"size={after}" in tab.url, tab.url


def test_a_copied_link_restores_the_page_and_its_settings(browser, server, tab):
    url, _tmp = server
    epochs = tab.get_by_role("spinbutton", name="Epochs", exact=True)
    epochs.fill("7")
    epochs.press("Enter")
    settle(tab)
    assert "epochs=7" in tab.url, tab.url
    other = new_tab(browser)  # another browser context: a new session that knows nothing of the first
    link = tab.url
    other.goto(link)
    settle(other)
    box = other.get_by_role("spinbutton", name="Epochs", exact=True)
    deadline = time.monotonic() + 20  # the page may run once more after the link's settings are applied
    while (shown := box.input_value()) != "7" and time.monotonic() < deadline:
        other.wait_for_timeout(250)
    if shown != "7":
        shoot(other, "link-failed")
    assert shown == "7", (link, other.url, main_text(other)[:1500])
    assert sidebar_size(other) == sidebar_size(tab)
    assert "0 · Fine-tune" in main_text(other)
    other.goto(LINKS["trained"])  # the link of a trained view opens with its stored run, nothing to train
    settle(other)
    metric(other, "Test accuracy").first.wait_for(timeout=30_000)
    assert caption_size(other) == sidebar_size(tab)
    other.goto(f"{url}/finetune?size=9999&epochs=abc&colour=blue")
    settle(other)
    text = main_text(other)
    assert "could not be used and was ignored" in text, text[:2000]
    for value in ("size=9999", "epochs=abc", "colour=blue"):
        assert value in text, value
    assert_clean(other, "bad link")
    shoot(other, "bad-link", full_page=False)
    other.context.close()


def shown_equals_stored(tab, artifacts, page: str) -> None:
    """The result strip's first figures are the stored run's: the run the caption names, read from the store."""
    from core.store.folders import Store

    ids = re.findall(r"run ([0-9a-f]{16})", main_text(tab))
    assert ids, f"{page}: no run id on the page"
    record = Store(artifacts).load_run(ids[0])
    assert record is not None, f"{page}: run {ids[0]} is not stored"
    for label, key in (("Test accuracy", "test_accuracy"), ("Validation accuracy", "val_accuracy")):
        shown = [m.inner_text().strip() for m in metric(tab, label).locator('[data-testid="stMetricValue"]').all()]
        assert f"{record.metrics[key]:.3f}" in shown, (page, label, shown, record.metrics[key])


def test_a_run_on_every_task_page_fits_the_screen(server, tab):
    artifacts = server[1] / "artifacts"
    for title, page in TASK_PAGES.items():
        t0 = time.monotonic()
        go(tab, title)
        if page == "augmentation":
            preview_changes(tab)
        button = sidebar_button(tab, page)
        if "Retrain" not in button.inner_text():
            button.click()
            wait_for_result(tab, page)
        first_result_above_the_fold(tab, page)
        shown_equals_stored(tab, artifacts, page)
        assert_clean(tab, page)
        assert not wider_than_container(tab), (page, wider_than_container(tab))
        shoot(tab, page)
        print(f"{page}: {time.monotonic() - t0:.0f} s")
    for title, page in OTHER_PAGES.items():
        go(tab, title)
        if page == "activations":
            upload_on_activations(tab)
        assert_clean(tab, page)
        assert not wider_than_container(tab), (page, wider_than_container(tab))
        shoot(tab, page)
    assert tab.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').count() >= 1  # the Runs table


def test_a_zip_uploaded_in_the_sidebar_becomes_the_dataset_and_trains(server, tab):
    _url, tmp = server
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # class folders only: SceneLab splits them, seeded and stratified
        for cls in ("forest", "street"):
            for i in range(10):
                img = io.BytesIO()
                make_image(cls, 500 + i).save(img, format="JPEG", quality=95)
                zf.writestr(f"{cls}/{cls}_{i}.jpg", img.getvalue())
    go(tab, "0 Fine-tune")
    tab.get_by_text("Add a dataset (.zip)").click()
    tab.locator('[data-testid="stSidebar"] input[type="file"]').set_input_files(
        files=[{"name": "two scenes.zip", "mimeType": "application/zip", "buffer": buf.getvalue()}]
    )
    tab.get_by_text("2 classes · 14 train · 6 test images").first.wait_for(timeout=60_000)
    settle(tab)
    assert (tmp / "uploads" / "two_scenes").is_dir()
    tab.get_by_text("Head only (backbone frozen)").click()
    settle(tab)
    sidebar_button(tab, "finetune").click()
    wait_for_result(tab, "finetune", "upload")
    assert "dataset two_scenes" in main_text(tab)
    assert_clean(tab, "upload")
    shoot(tab, "upload")


def preview_changes(tab) -> None:
    """Page 3: the augmented preview changes when an augmentation is switched on."""

    def preview_src() -> str:  # the second image: the augmented one, beside the originals
        return tab.locator('[data-testid="stMain"] [data-testid="stImage"] img').nth(1).get_attribute("src") or ""

    before = preview_src()
    assert before, "no preview image"
    tab.get_by_text("Horizontal flip", exact=True).click()
    settle(tab)
    tab.wait_for_function(
        'old => { const i = document.querySelectorAll(\'[data-testid="stMain"] [data-testid="stImage"] img\')[1];'
        " return i && i.src !== old; }",
        arg=before,
        timeout=15_000,
    )


def upload_on_activations(tab) -> None:
    tab.get_by_text("Upload a photo").click()
    settle(tab)
    buf = io.BytesIO()
    make_image("coast", 7, size=96).save(buf, format="JPEG")
    tab.locator('[data-testid="stMain"] input[type="file"]').set_input_files(
        files=[{"name": "coast.jpg", "mimeType": "image/jpeg", "buffer": buf.getvalue()}]
    )
    with contextlib.suppress(Exception):
        tab.get_by_text("coast.jpg, as the model sees it").first.wait_for(timeout=90_000)
    settle(tab, timeout_s=120)
    assert tab.get_by_text("as the model sees it").count() > 0, "the uploaded image was not shown"
