"""What the real-browser tests share: Chromium's launch, waiting for the app, navigation and page checks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BAD_TEXT = ("Traceback", "StreamlitAPIException", "Exception:", "Error:", "An error has occurred")
LAPTOP = {"width": 1400, "height": 1000}  # the issues' laptop screen


def need_browser() -> None:
    """Skip with the reason when Chromium or Playwright is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")


def settle(tab, quiet_ms: int = 800, timeout_s: float = 90) -> None:
    """Wait until the app has stopped running (no 'Running…' status widget) for ``quiet_ms``."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        running = tab.locator('[data-testid="stStatusWidget"]').count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif (time.monotonic() - quiet_since) * 1000 >= quiet_ms:
            return
        tab.wait_for_timeout(100)
    raise AssertionError("the app kept running")


def go(tab, title: str) -> None:
    """Open a page from the navigation and wait for it to be drawn."""
    tab.locator('[data-testid="stSidebarNav"] a').filter(has_text=title).first.click()
    tab.wait_for_function(
        "t => [...document.querySelectorAll('[data-testid=\"stSidebarNav\"] a')].some("
        "a => a.getAttribute('aria-current') === 'page' && a.innerText.includes(t))",
        arg=title,
    )
    settle(tab)


def main_text(tab) -> str:
    return tab.locator('[data-testid="stMain"]').inner_text()


def sidebar_text(tab) -> str:
    return tab.locator('[data-testid="stSidebar"]').inner_text()


def assert_clean(tab, name: str) -> None:
    """No exception element and no error words in the main area."""
    text = main_text(tab)
    assert tab.locator('[data-testid="stException"]').count() == 0, f"{name}: an exception is shown:\n{text[:2000]}"
    for bad in BAD_TEXT:
        assert bad not in text, f"{name}: {bad!r} on the page:\n{text[:2000]}"


def shoot(tab, name: str, *, full_page: bool = True) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    tab.screenshot(path=str(path), full_page=full_page)
    return path


def wider_than_container(tab) -> list[str]:
    """Images and charts in the main area that stick out of the block that holds them (page 2's clipped
    charts of issue 16 did), or out of the main area itself."""
    return tab.evaluate(
        """() => {
          const main = document.querySelector('[data-testid="stMain"]').getBoundingClientRect();
          return [...document.querySelectorAll('[data-testid="stMain"] img, [data-testid="stMain"] canvas,'
                                               + ' [data-testid="stMain"] [data-testid="stVegaLiteChart"] svg.marks')]
            .filter(e => e.getBoundingClientRect().width > 0)
            .filter(e => { const r = e.getBoundingClientRect();
                           const b = e.closest('[data-testid="stVerticalBlock"]').getBoundingClientRect();
                           return r.right > b.right + 1 || r.right > main.right + 1; })
            .map(e => e.tagName + ' ' + Math.round(e.getBoundingClientRect().width) + ' px in '
                      + Math.round(e.closest('[data-testid="stVerticalBlock"]').getBoundingClientRect().width));
        }"""
    )


def sidebar_button(tab, page: str):
    """The sidebar's Train/Retrain button of a task page (its widget key is ``<page>_train``)."""
    return tab.locator(f".st-key-{page}_train button").first


def metric(tab, label: str):
    """A metric of the main area by its label (the result strip's 'Test accuracy', ...)."""
    return tab.locator('[data-testid="stMain"] [data-testid="stMetric"]').filter(has_text=label)
