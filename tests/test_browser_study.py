"""The Study page in a real browser: a reproduction pressed, followed, and seen to end (issue 22).

One ``streamlit run app.py`` on a tiny generated dataset, a fresh artifacts folder. The page must rest while
nothing runs (no websocket traffic over 10 s: no fragment on a timer), refresh at most every 5 s while the
reproduction runs, let only whoever started it cancel it, end with its button back and every row stored,
rest again afterwards, and show the stored runs' figures.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.apphelpers import streamlit_server
from tests.browserkit import CHROMIUM, CHROMIUM_ARGS, LAPTOP, go, main_text, need_browser, settle, shoot
from tests.conftest import make_dataset

pytestmark = pytest.mark.browser
REPRODUCE_TIMEOUT_MS = 420_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    need_browser()
    tmp = tmp_path_factory.mktemp("browser-study")
    data = make_dataset(tmp / "tiny")
    env = dict(os.environ, SCENELAB_DATA=str(data), SCENELAB_ARTIFACTS=str(tmp / "artifacts"),
               SCENELAB_DATA_ROOTS=str(tmp), TF_CPP_MIN_LOG_LEVEL="2")  # fmt: skip
    env.pop("SCENELAB_ADMIN", None)
    with streamlit_server(env, tmp / "streamlit.log", timeout=90) as (_proc, url):
        yield url, tmp


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


class Traffic:
    """Timestamps of the websocket frames the app sends to one tab (every script or fragment run sends some)."""

    def __init__(self, tab) -> None:
        self.frames: list[float] = []
        tab.on("websocket", lambda ws: ws.on("framereceived", lambda _f: self.frames.append(time.monotonic())))

    def during(self, tab, seconds: float) -> list[float]:
        start = time.monotonic()
        tab.wait_for_timeout(int(seconds * 1000))
        return [t for t in self.frames if t >= start]


def bursts(times: list[float], gap: float = 1.0) -> int:
    """Runs of frames: frames closer than ``gap`` seconds belong to one script run."""
    return sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] > gap)


def open_study(browser, url: str):
    tab = browser.new_context(viewport=LAPTOP).new_page()
    tab.set_default_timeout(90_000)
    traffic = Traffic(tab)
    tab.goto(f"{url}/?size=32")
    settle(tab, timeout_s=150)
    # a fresh machine measures its speed once for the estimate (seconds), polling only until it is known
    tab.wait_for_function("() => (document.body.innerText.includes('on this machine.') || "
                          "document.body.innerText.includes('Reproducing')) && "
                          "!document.body.innerText.includes('measuring this machine')", timeout=120_000)  # fmt: skip
    settle(tab)
    return tab, traffic


def set_number(tab, label: str, value: int) -> None:
    box = tab.locator(f'[data-testid="stMain"] input[aria-label="{label}"]')
    box.fill(str(value))
    box.press("Enter")
    settle(tab)


def grid(tab, index: int = 0) -> list[dict[str, str]]:
    """The rows of the page's ``index``-th dataframe as {column: shown text}, read from its accessible table
    (the grid itself is drawn on a canvas)."""
    rows = tab.evaluate(
        """i => { const t = document.querySelectorAll('[data-testid="stDataFrame"] table')[i];
                  return [...t.querySelectorAll('tr')].map(r => [...r.querySelectorAll('th,td')]
                          .map(c => c.textContent.trim())); }""",
        index,
    )
    head, body = rows[0], rows[1:]
    return [dict(zip(head, r, strict=True)) for r in body]


def test_the_study_page_rests_while_nothing_runs(server, browser):
    url, _ = server
    tab, traffic = open_study(browser, url)
    text = main_text(tab)
    assert "The study, reproduced" in text and "on this machine" in text and ("about " in text or "roughly " in text)
    quiet = traffic.during(tab, 10)
    assert quiet == [], f"{len(quiet)} websocket frames in 10 s with nothing running: something reruns on a timer"
    tab.context.close()


def test_a_reproduction_runs_ends_and_shows_the_stored_figures(server, browser):
    url, tmp = server
    tab, traffic = open_study(browser, url)
    tab.get_by_text("quick (backbone frozen)").click()
    settle(tab)
    set_number(tab, "Seeds per row", 2)  # 2 seeds and 4 grid points: long enough to watch it run
    set_number(tab, "Search trials", 0)
    set_number(tab, "Augmentation grid points", 4)
    button = tab.locator(".st-key-study_reproduce button").first
    assert "quick" in button.inner_text() and button.is_enabled()
    button.click()
    tab.locator(".st-key-study_cancel").wait_for(timeout=60_000)
    # a second user sees the progress but cannot cancel someone else's reproduction
    other, _ = open_study(browser, url)
    other_text = main_text(other)
    assert "Reproducing" in other_text and "Only whoever started it" in other_text, other_text[:2000]
    assert other.locator(".st-key-study_cancel").count() == 0
    other.context.close()
    # while it runs: the table refreshes on a 5 s timer, not faster
    running = traffic.during(tab, 10)
    assert bursts(running) <= 3, f"{bursts(running)} script runs in 10 s while reproducing (at most every 5 s)"
    try:
        tab.get_by_text("The reproduction ended").wait_for(timeout=REPRODUCE_TIMEOUT_MS)
        settle(tab)
    except Exception:
        shoot(tab, "study-reproduction-failed")
        raise AssertionError(f"the reproduction did not end in the interface:\n{main_text(tab)[:3000]}") from None
    shoot(tab, "study-reproduced")
    text = main_text(tab)
    assert "quick: every run stored" in text and "Reproducing" not in text
    button = tab.locator(".st-key-study_reproduce button").first
    assert button.is_disabled()  # the button is back; nothing left to train
    after = traffic.during(tab, 10)
    assert after == [], f"{len(after)} websocket frames in 10 s after the reproduction ended: a rerun loop"
    # the figures shown are the stored runs' figures
    from core.config import RunConfig
    from core.store.folders import Store
    from core.study import reproduce

    base = RunConfig(backbone="efficientnet_lite0", weights="imagenet", image_size=32)
    how = reproduce.Plan(mode="quick", repeats=2, grid_sample=4, trials=0)
    stored = reproduce.table(base, str(tmp / "tiny"), Store(tmp / "artifacts"), how=how)
    shown = grid(tab)
    assert len(shown) == len(stored) == 13
    for row, result in zip(shown, stored, strict=True):
        assert result.cached and row["setting"] == result.setting
        assert row["backbone frozen"] == f"{result.ours:.3f} ({result.low:.3f}–{result.high:.3f}) · 2 seeds", row
        assert row["runs"].startswith(result.run_id), row
    tab.context.close()


PAGES = ["0 Fine-tune", "1 Truncate", "2 Small data", "3 Augmentation", "4 Regularisation", "5 Hyperparameter search",
         "6 Activations", "Dataset map", "Runs", "Study"]  # fmt: skip


def test_no_page_reruns_on_a_timer_while_nothing_runs(server, browser):
    """Every page, with the runs above stored and nothing training: no websocket traffic once it has settled."""
    url, _ = server
    tab, traffic = open_study(browser, url)
    noisy = {}
    for title in PAGES:
        go(tab, title)
        settle(tab, timeout_s=120)
        frames = traffic.during(tab, 6)
        if frames:
            noisy[title] = bursts(frames)
    assert noisy == {}, f"pages that reran on a timer with nothing running (script runs in 6 s): {noisy}"
    tab.context.close()
