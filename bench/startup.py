"""How fast a stored answer comes, from process start: the CLI's cached answers and the app's first page.

Every command that only reads the store (a stored run through ``train``, the reproduction with every row
stored, ``describe`` asked before, ``runs``) is timed in a fresh process from its start to its exit, and the
process reports whether it imported TensorFlow, Keras or scikit-learn. The app is started headless
(``streamlit run app.py``) and its first page (the Study page, the table filled from the store) is opened in
headless Chromium: the figure is the time from the server answering its health check to the page settled,
and the server's memory map says whether TensorFlow was loaded to draw it.

``--baseline DIR`` runs the very same steps in another checkout (e.g. ``git worktree add DIR <commit>``) in
the same run, one after the other per step, so the figures compare on the same machine and load; the
reference ``python -c "import tensorflow, keras"`` is what every call paid before.

    python -m bench.startup [--tiny] [--data DIR] [--artifacts DIR] [--baseline DIR] [--repeats 3]

Without ``--artifacts`` the bench first fills a fresh artifacts folder with the quick reproduction (at 32 px
and 2 search trials in ``--tiny`` mode); pass a folder that holds one (``python -m core reproduce``) to time
the answers of a real store.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import CpuMeter, dataset_label, emit, parser, quiet, resolve_data, wait_for_quiet

quiet()
from core.config import RunConfig  # noqa: E402
from core.search.request import config_argv  # noqa: E402
from core.store.folders import Store  # noqa: E402
from tests.apphelpers import CORE_REPORTING_IMPORTS  # noqa: E402 - after quiet() put the repository on sys.path

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"train_stored_s": 2.0, "reproduce_cached_s": 5.0, "first_page_s": 3.0}
TINY = ["--image-size", "32", "--trials", "2", "--grid-sample", "2"]
IMPORT_TF = "import tensorflow, keras"


def _env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def timed_process(code: str, args: list[str], cwd: Path) -> dict[str, Any]:
    """Wall seconds of ``python -c code ARGS`` from start to exit, its CPU load context and heavy imports."""
    meter = CpuMeter().start()
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    seconds = time.monotonic() - t0
    load = meter.stop()
    if proc.returncode != 0:
        said = [line for line in proc.stderr.strip().splitlines() if not line.startswith("HEAVY=")] or ["?"]
        return {"seconds": None, "error": said[-1][:200]}
    heavy = [json.loads(line[6:]) for line in proc.stderr.splitlines() if line.startswith("HEAVY=")]
    return {"seconds": round(seconds, 3), "heavy": heavy[0] if heavy else None, "others_cores": load["others_cores"],
            "stdout": proc.stdout}  # fmt: skip


def stored_run_flags(store: Store, run_id: str) -> list[str]:
    """``train``'s flags that ask for the stored run ``run_id`` (from the settings' declarations)."""
    return config_argv(RunConfig.from_dict(store.load_run(run_id).config["run"]))


def cli_steps(data: Path, artifacts: Path, base: list[str], run_flags: list[str]) -> dict[str, list[str]]:
    common = ["--data", str(data), "--artifacts", str(artifacts), "--json"]
    return {
        "import tensorflow, keras": [],
        "train (stored run)": ["train", *common, *run_flags],
        "reproduce (all stored, quick)": ["reproduce", *common, *base],
        "reproduce --estimate (faithful)": ["reproduce", *common, *base, "--mode", "faithful", "--estimate"],
        "describe (asked before)": ["describe", "--artifacts", str(artifacts), "--json"],
        "runs": ["runs", "--artifacts", str(artifacts), "--json"],
    }


def measure_cli(steps: dict[str, list[str]], arms: dict[str, Path], repeats: int) -> dict[str, dict[str, Any]]:
    """Each step ``repeats`` times per arm, the arms interleaved; the median and what the process imported."""
    out: dict[str, dict[str, Any]] = {arm: {} for arm in arms}
    for label, args in steps.items():
        code = IMPORT_TF if not args else CORE_REPORTING_IMPORTS
        for arm, cwd in arms.items():
            step_args = args
            if arm != "candidate" and args[:1] == ["describe"]:  # before: describe had no --artifacts (no cache)
                step_args = ["describe", "--json"]
            timed_process(code, step_args, cwd)  # a first call warms the file cache (not counted)
        samples: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
        for _ in range(repeats):
            for arm, cwd in arms.items():
                step_args = ["describe", "--json"] if arm != "candidate" and args[:1] == ["describe"] else args
                samples[arm].append(timed_process(code, step_args, cwd))
        for arm, runs in samples.items():
            secs = [r["seconds"] for r in runs if r["seconds"] is not None]
            out[arm][label] = {
                "median_s": round(statistics.median(secs), 3) if secs else None,
                "samples_s": secs,
                "imports": runs[-1].get("heavy") if args else ["tensorflow", "keras"],
                "error": next((r["error"] for r in runs if "error" in r), None),
                "others_cores": round(max(r.get("others_cores", 0.0) for r in runs), 2),
            }
            print(f"  {arm:9} {label}: {out[arm][label]['median_s']} s  {out[arm][label]['imports']}", file=sys.stderr,
                  flush=True)  # fmt: skip
    return out


def first_page(cwd: Path, artifacts: Path, data: Path, keep: Path, query: str) -> dict[str, Any]:
    """Server start to health, health to a settled Study page in Chromium, and whether TensorFlow is mapped."""
    import pytest
    from playwright.sync_api import sync_playwright

    from bench.browser import settled_at, title
    from tests.apphelpers import streamlit_server
    from tests.browserkit import CHROMIUM, CHROMIUM_ARGS, LAPTOP

    env = {**_env(), "SCENELAB_ARTIFACTS": str(artifacts), "SCENELAB_DATA": str(data)}
    t_start = time.monotonic()
    try:
        with streamlit_server(env, keep / f"streamlit-{cwd.name}.log", timeout=120, cwd=cwd) as (proc, url):
            healthy = time.monotonic() - t_start
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
                tab = browser.new_context(viewport=LAPTOP).new_page()
                tab.set_default_timeout(300_000)
                meter = CpuMeter().start()
                t0 = time.monotonic()
                tab.goto(url + query)
                page_s = settled_at(tab, t0, title("The study"))
                load = meter.stop()
                maps = Path(f"/proc/{proc.pid}/maps").read_text()
                browser.close()
    except pytest.fail.Exception as exc:
        return {"error": str(exc)[:300]}
    return {"server_healthy_s": round(healthy, 3), "first_page_s": page_s, "tensorflow_loaded": "libtensorflow" in maps,
            "others_cores": load["others_cores"]}  # fmt: skip


def fill_store(data: Path, artifacts: Path, base: list[str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "core", "reproduce", "--data", str(data), "--artifacts", str(artifacts),
                           *base, "--json"], cwd=REPO, env=_env(), capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"the reproduction that fills the store failed:\n{proc.stderr[-3000:]}")
    return round(time.monotonic() - t0, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--artifacts", default=None, help="a store that holds the quick reproduction (default: fill one)")
    p.add_argument("--baseline", default=None, help="another checkout to time side by side (e.g. the commit before)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-browser", action="store_true", help="time the CLI only")
    args = p.parse_args(argv)
    wait_for_quiet(args.quiet_wait)
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        data = resolve_data(args, work)
        base = TINY if args.tiny else []
        artifacts = Path(args.artifacts) if args.artifacts else work / "artifacts"
        filled_s = None if args.artifacts else fill_store(data, artifacts, base)
        store = Store(artifacts)
        rows = json.loads(timed_process(CORE_REPORTING_IMPORTS, ["reproduce", "--data", str(data), "--artifacts", str(artifacts),
                                                    *base, "--json"], REPO)["stdout"].strip().splitlines()[-1])["rows"]  # fmt: skip
        run_id = rows[0]["run_id"]
        arms = {"candidate": REPO, **({"baseline": Path(args.baseline).resolve()} if args.baseline else {})}
        cli = measure_cli(cli_steps(data, artifacts, base, stored_run_flags(store, run_id)), arms, args.repeats)
        query = "/?size=32" if args.tiny else ""  # the store's image size (the app opens at 128 px)
        app = {} if args.no_browser else {arm: first_page(cwd, artifacts, data, work, query) for arm, cwd in arms.items()}
    return report(cli, app, data, run_id, filled_s, args)


def report(cli: dict, app: dict, data: Path, run_id: str, filled_s: float | None, args: Any) -> dict[str, Any]:
    cand = cli["candidate"]
    met = {"train_stored_s": (cand["train (stored run)"]["median_s"] or 1e9) <= TARGETS["train_stored_s"],
           "reproduce_cached_s": (cand["reproduce (all stored, quick)"]["median_s"] or 1e9) <= TARGETS["reproduce_cached_s"],
           "no_tensorflow": all(not step["imports"] or label.startswith("import") for label, step in cand.items()
                                if label != "import tensorflow, keras")}  # fmt: skip
    if "candidate" in app and "first_page_s" in app["candidate"]:
        met["first_page_s"] = app["candidate"]["first_page_s"] <= TARGETS["first_page_s"]
    figures = {"dataset": dataset_label(data), "stored_run": run_id, "store_filled_s": filled_s, "repeats": args.repeats,
               "baseline": bool(args.baseline), "cli": cli, "app": app, "targets": TARGETS, "met": met}  # fmt: skip
    rows = []
    for label in cand:
        before = cli.get("baseline", {}).get(label, {})
        rows.append([label, cand[label]["median_s"], ",".join(cand[label]["imports"] or []) or "none",
                     before.get("median_s"), ",".join(before.get("imports") or []) or ("none" if before else "")])  # fmt: skip
    for arm, fig in app.items():
        rows.append([f"app first page ({arm})", fig.get("first_page_s"), "tensorflow" if fig.get("tensorflow_loaded") else "none",
                     None, ""])  # fmt: skip
    log = [{"seconds": s["median_s"] or 0.0, "others_cores": s["others_cores"], "loadavg_1m": os.getloadavg()[0]}
           for arm in cli.values() for s in arm.values()]  # fmt: skip
    return emit("startup", figures, ["step", "now (s)", "imports", "before (s)", "imports before"], rows, log,
                args.tiny)  # fmt: skip


if __name__ == "__main__":
    main()


# -- BENCHMARKS.md --------------------------------------------------------------------------------------------
def target_rows(f: dict[str, Any]) -> list[list[Any]]:
    """The summary table's rows: a stored run via ``train``, the reproduction all stored, the app's first page."""
    cand, where = f["cli"]["candidate"], f"{f['dataset']} / its store"
    rows = [["stored run via `train`, from process start", where, f"{cand['train (stored run)']['median_s']} s",
             f"≤ {f['targets']['train_stored_s']:g} s", f["met"]["train_stored_s"]],
            ["`reproduce`, every row stored", where, f"{cand['reproduce (all stored, quick)']['median_s']} s",
             f"≤ {f['targets']['reproduce_cached_s']:g} s", f["met"]["reproduce_cached_s"]]]  # fmt: skip
    app = f["app"].get("candidate", {})
    if "first_page_s" in app:
        rows.append(["app: first page after the server starts", where, f"{app['first_page_s']} s",
                     f"≤ {f['targets']['first_page_s']:g} s", f["met"]["first_page_s"]])  # fmt: skip
    return rows


def section(f: dict[str, Any], md_table: Any, load_line: Any) -> str:
    cli, app = f["cli"], f["app"]
    before = cli.get("baseline", {})

    def imports(step: dict[str, Any]) -> str:
        if step.get("median_s") is None:  # the command failed there (e.g. did not exist yet)
            return "–"
        return ", ".join(step.get("imports") or []) or "none"

    rows = [[label, s["median_s"], imports(s), before.get(label, {}).get("median_s"),
             imports(before[label]) if label in before else "–"] for label, s in cli["candidate"].items()]  # fmt: skip
    pages = [[arm, a.get("server_healthy_s"), a.get("first_page_s"), a.get("tensorflow_loaded")] for arm, a in app.items()]
    return "\n".join(
        [
            "## Answers from the store without TensorFlow (bench/startup.py)",
            "",
            f"Each command in a fresh process, wall seconds from its start to its exit (median of {f['repeats']}, after "
            f"one uncounted call), on {f['dataset']} with the store of a whole reproduction; *before* is the same "
            "command in a checkout of the commit before this work, run interleaved with *now* in the same run. "
            "*imports*: which of TensorFlow, Keras and scikit-learn the process imported.",
            "",
            md_table(["command", "now (s)", "imports", "before (s)", "imports before"], rows),
            "",
            "The app: `streamlit run app.py` until its health check answers, then the first page (the Study page, "
            "its table read from the store) opened in headless Chromium until settled; *TensorFlow loaded*: the "
            "server's memory map holds libtensorflow after the page settled.",
            "",
            md_table(["checkout", "server healthy (s)", "first page (s)", "TensorFlow loaded"], pages),
            "",
            load_line(f),
        ]
    )
