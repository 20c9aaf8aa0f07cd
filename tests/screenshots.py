"""Screenshots of every page of a running app, as a user sees them (a tool, not a test).

    python -m tests.screenshots --url http://127.0.0.1:8501 --out /tmp/shots [--backbone EfficientNet-Lite0]
        [--image-size 64] [--width 1400 --height 1000] [--pages finetune,truncate]

Each page is saved twice: ``<page>.png`` (the first screen, at the window's size: what is above the fold)
and ``<page>-full.png`` (the whole page). Uses Debian's Chromium through Playwright, like the browser tests.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.browserkit import CHROMIUM, CHROMIUM_ARGS, settle

PAGES = {
    "study": "Study",
    "finetune": "0 Fine-tune",
    "truncate": "1 Truncate",
    "small_data": "2 Small data",
    "augmentation": "3 Augmentation",
    "regularisation": "4 Regularisation",
    "search": "5 Hyperparameter search",
    "activations": "6 Activations",
    "dataset_map": "Dataset map",
    "runs": "Runs",
}


def choose_in_sidebar(tab, backbone: str | None, image_size: int | None) -> None:
    if backbone:
        tab.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        tab.get_by_role("option", name=backbone).click()
        settle(tab)
    if image_size:
        slider = tab.locator('[data-testid="stSidebar"] input[type="range"][aria-label="Image size (px)"]')
        value = (
            tab.locator('[data-testid="stSidebar"] [data-testid="stSlider"]')
            .filter(has=slider)
            .locator('[data-testid="stSliderThumbValue"]')
        )
        slider.focus()  # arrows move it one option
        for _ in range(12):
            now = int(value.inner_text().strip() or 0)
            if now == image_size:
                break
            slider.press("ArrowLeft" if now > image_size else "ArrowRight")
            settle(tab, 600)


def main() -> None:
    from playwright.sync_api import sync_playwright

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--backbone", default="EfficientNet-Lite0")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=1000)
    p.add_argument("--pages", default=",".join(PAGES))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_context(viewport={"width": args.width, "height": args.height}).new_page()
        tab.set_default_timeout(60_000)
        tab.goto(args.url)
        settle(tab)
        choose_in_sidebar(tab, args.backbone, args.image_size)
        for name in args.pages.split(","):
            title = PAGES[name]
            links = tab.locator('[data-testid="stSidebarNav"] a').filter(has_text=title)
            if links.count() == 0:
                print(f"{name}: no such page in the navigation")
                continue
            links.first.click()
            settle(tab)
            tab.wait_for_timeout(1500)  # charts draw after the script run ends
            tab.screenshot(path=str(args.out / f"{name}.png"))
            height = tab.evaluate("() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
            tab.set_viewport_size({"width": args.width, "height": max(args.height, int(height) + 40)})
            settle(tab, 500)
            tab.wait_for_timeout(800)
            tab.screenshot(path=str(args.out / f"{name}-full.png"), full_page=True)
            tab.set_viewport_size({"width": args.width, "height": args.height})
            print(f"{name}: {args.out / name}.png")
        browser.close()


if __name__ == "__main__":
    main()
