"""What a student waits for in a real browser: first load, each page after a switch, page 6, the dataset map.

``python -m bench.browser [--data DIR] [--tiny]`` trains one head run through the CLI (``python -m core train``,
EfficientNet-Lite0 with ImageNet weights) into a fresh artifacts folder, then starts ``streamlit run app.py``
headless with a fresh HOME, KERAS_HOME and SCENELAB_ARTIFACTS (that folder), so the server converts the Lite0
weights itself on first use, as on a new laptop), and drives headless Chromium through Playwright:

1. **first load**: from ``goto`` to a settled Study page;
2. **each page after a switch** through the sidebar navigation, *cold* (first visit) then *warm* (second round);
3. **page 6** per explanation method (Grad-CAM, Grad-CAM++, Score-CAM, occlusion: the "Method" radio),
   cold (first computation in this server) then warm (the same choices again);
4. **the dataset map** with PCA and with t-SNE, cold (computed) then cached (asked again);
5. **page 3's preview** after a slider change (the rotation slider moved one step, three times).

**Settled** is what ``tests/browserkit.settle`` waits for: no "Running…" status widget for ``QUIET_MS``. A
figure is the time from the action (click, key press, ``goto``) to the *start* of that quiet period, so the
800 ms of waiting is not counted; the page must also show what the step expects (its title, the method's
caption, both maps) before the quiet period counts. Training is not timed. Timings are end to end (network,
Streamlit's script run, drawing in Chromium) and, like the other benchmarks, record the CPU that other
processes used meanwhile.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CpuMeter, dataset_label, emit, parser, quiet, resolve_data, wait_for_quiet

quiet()
from core.explain.methods import EXPLAIN_METHODS as METHODS  # noqa: E402
from tests.apphelpers import streamlit_server  # noqa: E402 - after quiet() put the repository on sys.path
from tests.browserkit import CHROMIUM, CHROMIUM_ARGS, LAPTOP  # noqa: E402
from ui.catalog import PAGES  # noqa: E402

QUIET_MS = 800  # settled: no status widget for this long (tests/browserkit.settle)
TARGETS = {"page_warm_s": 3.0, "first_load_s": 10.0, "map_tsne_cold_s": 10.0}
TITLES = {p.label: p.title for p in PAGES}  # each page's st.title holds its catalog title ("6 · Activations")
TITLES.update({"Study": "The study", "1 Truncate": "Truncate"})
SLIDER = ".st-key-_w_augmentation_rotation input[type='range']"  # react-aria's slider: a range input


# -- waiting -------------------------------------------------------------------------------------------
def settled_at(tab: Any, t0: float, ready: Any = None, timeout_s: float = 300) -> float:
    """Seconds from ``t0`` until the app went quiet for good; the quiet period counts only once ``ready(tab)``
    (the step's result is on the page) holds, so a rerun that has not started yet is not taken for settled."""
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
        running = tab.locator('[data-testid="stStatusWidget"]').count() > 0
        now = time.monotonic()
        if running or (ready is not None and not ready(tab)):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif (now - quiet_since) * 1000 >= QUIET_MS:
            return round(quiet_since - t0, 3)
        tab.wait_for_timeout(50)
    raise RuntimeError(f"the app kept running for {timeout_s} s")


def shows(text: str, where: str = '[data-testid="stMain"]') -> Any:
    """``ready``: ``text`` is in the main area (``where``: a narrower selector, e.g. the page title)."""
    return lambda tab: tab.locator(where).filter(has_text=text).count() > 0


def title(text: str) -> Any:
    return shows(text, '[data-testid="stMain"] h1')


def images(tab: Any) -> list[str]:
    return tab.eval_on_selector_all('[data-testid="stMain"] img', "els => els.map(e => e.src)")


def new_images(before: list[str]) -> Any:
    """``ready``: the main area's pictures are not the ones shown before the action."""
    return lambda tab: images(tab) != before


def timed(log: list[dict[str, Any]], label: str, tab: Any, action: Any, ready: Any = None) -> float:
    """Do ``action``, wait until settled; log and return the seconds (with the CPU others used meanwhile)."""
    meter = CpuMeter().start()
    t0 = time.monotonic()
    action()
    seconds = settled_at(tab, t0, ready)
    rec = {"label": label, **meter.stop()}
    rec["seconds"] = seconds  # the meter's own span includes the quiet period; the figure does not
    log.append(rec)
    print(f"  {label}: {seconds:.2f} s (others {rec['others_cores']} cores)", file=sys.stderr, flush=True)
    return seconds


def nav(tab: Any, label: str) -> None:
    tab.locator('[data-testid="stSidebarNav"] a').filter(has_text=label).first.click()


def radio(tab: Any, having: str, option: str) -> None:
    group = tab.locator('[data-testid="stMain"] [data-testid="stRadio"]').filter(has_text=having).first
    group.get_by_text(option, exact=True).click()


def nudge(tab: Any, key: str) -> None:
    slider = tab.locator(SLIDER).first
    slider.focus()
    slider.press(key)


# -- the steps -----------------------------------------------------------------------------------------
def pages_round(tab: Any, log: list[dict[str, Any]], kind: str) -> dict[str, float]:
    out = {}
    for p in PAGES[1:] + PAGES[:1]:  # from the Study page around to it again
        out[p.label] = timed(log, f"page {p.label}, {kind}", tab, lambda p=p: nav(tab, p.label), title(TITLES[p.label]))
    return out


def page6(tab: Any, log: list[dict[str, Any]], kind: str) -> dict[str, float]:
    nav(tab, PAGES[7].label)
    settled_at(tab, time.monotonic(), shows("Before and after fine-tuning"))
    out = {}
    for method in ("gradcam++", "scorecam", "occlusion", "gradcam"):  # the page opens on Grad-CAM
        name = METHODS[method]
        out[method] = timed(log, f"page 6 {name}, {kind}", tab, lambda n=name: radio(tab, "Grad-CAM++", n),
                            shows(f"{name} of "))  # fmt: skip
    return out


def dataset_map(tab: Any, log: list[dict[str, Any]], kind: str) -> dict[str, float]:
    out = {"pca": timed(log, f"map PCA, {kind} (page switch)", tab, lambda: nav(tab, "Dataset map"),
                        shows("PCA of the"))}  # fmt: skip (cold: the pages' round computed it; see drive)
    out["tsne"] = timed(log, f"map t-SNE, {kind}", tab, lambda: radio(tab, "PCA", "t-SNE"), shows("t-SNE of the"))
    radio(tab, "PCA", "PCA")  # back to the default for the next round
    settled_at(tab, time.monotonic(), shows("PCA of the"))
    return out


def preview(tab: Any, log: list[dict[str, Any]]) -> list[float]:
    nav(tab, "3 Augmentation")
    settled_at(tab, time.monotonic(), title("Augmentation"))
    out = []
    for i, key in enumerate(("ArrowRight",) * 3):  # new values each time (no cached preview)
        before = images(tab)
        out.append(timed(log, f"page 3 preview after a slider step ({i + 1})", tab, lambda k=key: nudge(tab, k),
                         new_images(before)))  # fmt: skip
    return out


# -- setting up ------------------------------------------------------------------------------------------
def train_run(data: Path, root: Path, tiny: bool) -> dict[str, Any]:
    """A head run and its fine-tuned twin (head, then the last block), as task 0 of the Study leaves them, through
    the CLI with its own KERAS_HOME (so the server still converts the weights cold); page 6 opens on the pair."""
    quick = ["--epochs", "2", "--full-epochs", "1", "--batch-size", "8", "--val-fraction", "0.25"] if tiny else []
    base = [sys.executable, "-m", "core", "train", "--data", str(data), "--backbone", "efficientnet_lite0", "--weights",
            "imagenet", "--image-size", "128", "--artifacts", str(root / "artifacts"), "--json"]  # fmt: skip
    env = {**os.environ, "KERAS_HOME": str(root / "keras-cli"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    t0, outs = time.monotonic(), []
    for phase in (["--phase", "head"], ["--phase", "head+full", "--freeze-blocks", "3"]):
        cmd = [*base, *phase, *([a for a in quick if a != "--full-epochs" and a != "1"] if phase[1] == "head" else quick)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
        if proc.returncode != 0:
            raise SystemExit(f"training the {phase[1]} run failed:\n{proc.stderr[-3000:]}")
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    out = outs[-1]
    return {"run_id": out.get("run_id"), "head_run_id": outs[0].get("run_id"), "seconds": round(time.monotonic() - t0, 1),
            "test_accuracy": (out.get("metrics") or {}).get("test_accuracy", out.get("test_accuracy"))}  # fmt: skip


def server_env(data: Path, root: Path) -> dict[str, str]:
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ", "VIRTUAL_ENV")}
    return {**keep, "HOME": str(home), "KERAS_HOME": str(root / "keras-server"), "TF_CPP_MIN_LOG_LEVEL": "2",
            "SCENELAB_ARTIFACTS": str(root / "artifacts"), "SCENELAB_DATA": str(data)}  # fmt: skip


def drive(url: str, log: list[dict[str, Any]]) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_context(viewport=LAPTOP).new_page()
        tab.set_default_timeout(300_000)
        fig: dict[str, Any] = {"first_load_s": timed(log, "first load", tab, lambda: tab.goto(url), title("The study"))}
        fig["pages_cold_s"] = pages_round(tab, log, "cold")
        fig["pages_warm_s"] = pages_round(tab, log, "warm")
        fig["page6_cold_s"], fig["page6_warm_s"] = page6(tab, log, "cold"), page6(tab, log, "warm")
        fig["map_cold_s"], fig["map_cached_s"] = dataset_map(tab, log, "cold"), dataset_map(tab, log, "cached")
        fig["map_cold_s"]["pca"] = fig["pages_cold_s"]["Dataset map"]  # PCA was computed on the first visit
        fig["preview_s"] = preview(tab, log)
        browser.close()
    return fig


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--keep", default=None, help="work in this folder (kept: the server's log, artifacts)")
    args = p.parse_args(argv)
    if not CHROMIUM.exists():
        raise SystemExit(f"{CHROMIUM} is missing: install Debian's chromium package.")
    wait_for_quiet(args.quiet_wait)
    with tempfile.TemporaryDirectory(prefix="bench-browser-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        data = resolve_data(args, root)
        run = train_run(data, root, args.tiny)
        log: list[dict[str, Any]] = []
        import pytest  # streamlit_server reports a failed start through pytest.fail

        try:
            with streamlit_server(server_env(data, root), root / "streamlit.log", timeout=120) as (_proc, url):
                fig = drive(url, log)
        except pytest.fail.Exception as exc:
            raise SystemExit(str(exc)) from None
    return report(fig, run, data, log, args.tiny)


def report(fig: dict[str, Any], run: dict[str, Any], data: Path, log: list[dict[str, Any]], tiny: bool) -> dict[str, Any]:
    worst_warm = max(fig["pages_warm_s"].values())
    fig.update(
        dataset=dataset_label(data), run=run, quiet_ms=QUIET_MS, targets=TARGETS, page_warm_max_s=worst_warm,
        preview_median_s=sorted(fig["preview_s"])[len(fig["preview_s"]) // 2],
        met={"page_warm_s": worst_warm <= TARGETS["page_warm_s"], "first_load_s": fig["first_load_s"] <= TARGETS["first_load_s"],
             "map_tsne_cold_s": fig["map_cold_s"]["tsne"] <= TARGETS["map_tsne_cold_s"]},
        steps=[{k: r[k] for k in ("label", "seconds", "others_cores", "loadavg_1m")} for r in log],
    )  # fmt: skip
    rows = [[r["label"], r["seconds"], r["others_cores"]] for r in log]
    return emit("browser", fig, ["step", "seconds to settled", "others (cores)"], rows, log, tiny)


if __name__ == "__main__":
    main()
