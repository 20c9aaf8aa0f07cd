"""The app with ``SCENELAB_CLUSTER`` set, in a real browser: Train in the sidebar trains on a Dask worker.

A real ``distributed.LocalCluster`` (a scheduler and one worker process) and ``streamlit run app.py`` pointed at
it on a tiny generated dataset: the sidebar says runs train on that cluster, page 0's Train says which worker
trains the run while it trains, and the run comes home: the page shows it and the app's store holds it, trained
on that worker.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.apphelpers import local_cluster, streamlit_server
from tests.browserkit import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LAPTOP,
    assert_clean,
    main_text,
    metric,
    need_browser,
    settle,
    shoot,
    sidebar_button,
    sidebar_text,
)
from tests.conftest import make_dataset

pytestmark = pytest.mark.browser
TRAIN_TIMEOUT_MS = 300_000


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    need_browser()
    tmp = tmp_path_factory.mktemp("browser-cluster")
    data = make_dataset(tmp / "tiny")
    workers = {"SCENELAB_WORKER_ARTIFACTS": str(tmp / "worker"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    with local_cluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, env=workers) as lc:
        env = dict(os.environ, SCENELAB_DATA=str(data), SCENELAB_ARTIFACTS=str(tmp / "artifacts"),
                   SCENELAB_CLUSTER=lc.scheduler_address, TF_CPP_MIN_LOG_LEVEL="2")  # fmt: skip
        with streamlit_server(env, tmp / "streamlit.log", timeout=90) as (_proc, url):
            yield url, tmp, lc.scheduler_address


def test_train_from_the_sidebar_runs_on_the_cluster_and_the_run_comes_home(app):
    from playwright.sync_api import sync_playwright

    url, tmp, address = app
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        tab = browser.new_context(viewport=LAPTOP).new_page()
        tab.set_default_timeout(60_000)
        try:
            tab.goto(f"{url}/finetune?size=32")  # the tiny images at their own size: a quick run
            button = sidebar_button(tab, "finetune")
            button.wait_for()
            settle(tab)
            tab.get_by_text(f"Runs train on the Dask cluster at {address}").wait_for(timeout=30_000)
            button.click()
            # while it trains: which worker (the progress events come from there)
            tab.get_by_text("on tcp://127.0.0.1:").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
            metric(tab, "Test accuracy").first.wait_for(timeout=TRAIN_TIMEOUT_MS)
            tab.locator(".st-key-finetune_cancel").wait_for(state="detached", timeout=TRAIN_TIMEOUT_MS)
            settle(tab)
            text = main_text(tab)
            runs = [p for p in (tmp / "artifacts" / "runs").iterdir() if not p.name.startswith(".")]
            assert len(runs) == 1, runs
            assert runs[0].name in text, text[:2000]  # the run's id in the result strip
            config = json.loads((runs[0] / "config.json").read_text())
            assert config["trained_on"].startswith("tcp://127.0.0.1:")
            assert "Retrain" in button.inner_text() and "cannot be reached" not in sidebar_text(tab)
            assert_clean(tab, "finetune on a cluster")
            shoot(tab, "finetune-cluster")
        except Exception:
            shoot(tab, "finetune-cluster-failed")
            raise
        finally:
            browser.close()
