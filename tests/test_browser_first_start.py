"""First start on a fresh machine (issue 14), in a real browser: a copy of the repository's files, an empty
``HOME``, no ``SCENELAB_DATA``, no ``../shared``, nothing cached. ``streamlit run app.py`` must open on the
bundled 8-scene dataset and train a head, with no terminal step in between.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from tests.apphelpers import streamlit_server
from tests.browserkit import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LAPTOP,
    REPO,
    assert_clean,
    go,
    main_text,
    metric,
    need_browser,
    settle,
    shoot,
    sidebar_button,
    sidebar_text,
)

pytestmark = pytest.mark.browser

UNSET = ("SCENELAB_DATA", "SCENELAB_ARTIFACTS", "SCENELAB_DATA_ROOTS", "SCENELAB_ADMIN", "KERAS_HOME",
         "XDG_CACHE_HOME", "XDG_CONFIG_HOME")  # fmt: skip


def clean_copy(dest) -> None:
    """The repository's files as a clone has them (tracked and new, not ignored): no artifacts, no caches."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")  # fmt: skip
    for rel in filter(None, listed):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def test_a_fresh_install_opens_on_the_bundled_dataset_and_trains_a_head(tmp_path):
    need_browser()
    if not (REPO / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone has")
    from playwright.sync_api import sync_playwright

    app, home = tmp_path / "scenelab", tmp_path / "home"
    home.mkdir()
    clean_copy(app)
    assert not (tmp_path / "shared").exists()
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env.update(HOME=str(home), TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.monotonic()
    with streamlit_server(env, tmp_path / "streamlit.log", timeout=90, cwd=app) as (_proc, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_context(viewport=LAPTOP).new_page()
        tab.set_default_timeout(60_000)
        tab.goto(url)
        tab.get_by_text("8 classes · 1881 train · 807 test images").first.wait_for(timeout=120_000)
        settle(tab)
        side = sidebar_text(tab)
        assert "mit_split_64" in side and "bundled copy" in side, side[:1500]
        assert "Point SceneLab at a dataset" not in main_text(tab)
        assert_clean(tab, "study")
        shoot(tab, "first-start-study", full_page=False)
        assert (
            app / "artifacts" / "bundled" / "mit_split_64" / "train"
        ).is_dir()  # unpacked once, in the app's artifacts

        go(tab, "0 Fine-tune")
        tab.get_by_text("Head only (backbone frozen)").click()
        settle(tab)
        sidebar_button(tab, "finetune").click()
        try:
            metric(tab, "Test accuracy").first.wait_for(timeout=400_000)
        except Exception:
            shoot(tab, "first-start-failed")
            raise AssertionError(f"no result after training:\n{main_text(tab)[:3000]}") from None
        settle(tab)
        text = main_text(tab)
        assert "dataset mit_split_64" in text and "EfficientNet-Lite0 (imagenet weights)" in text, text[:2000]
        assert_clean(tab, "finetune")
        shoot(tab, "first-start-finetune", full_page=False)
        browser.close()
    print(f"first start to a trained head: {time.monotonic() - t0:.0f} s")
