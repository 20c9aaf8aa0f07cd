"""The train panel every task page shares: Train/Retrain/Cancel in the sidebar, live progress on the page.

A page hands :func:`train_panel` the runs its settings mean (one, or a few: "both", "all four cuts") and
what is stored for them. The sidebar, under the shared settings, says whether they are trained, training
(with progress) or not yet, and holds the buttons; so a user who changes the image size or the seed there
retrains right there. While a run trains, :func:`live_progress` draws its progress at the top of the page,
where the user looks, and redraws the page once when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import streamlit as st

from core.config import RunConfig
from core.store.folders import RunRecord
from core.worker import Job
from ui.charts import draw_curves
from ui.format import fmt_acc, fmt_eta, fmt_seconds, run_name
from ui.resources import get_worker
from ui.settings import user_name


@dataclass
class Plan:
    """Runs a page's settings mean: ``configs`` with their run ids (None when unusable) and stored records."""

    configs: Sequence[RunConfig]
    run_ids: Sequence[str | None]
    records: Sequence[RunRecord | None]
    label: str = "Train"

    @property
    def trained(self) -> bool:
        return all(r is not None for r in self.records)


def jobs_key(page: str) -> str:
    return f"{page}_jobs"


def submit_runs(page: str, cfgs: Sequence[RunConfig], data_root: str, *, force: bool = False) -> list[Job]:
    """Ask the worker for ``cfgs`` and remember them as this page's jobs (with its earlier ones still running)."""
    worker = get_worker()
    meta = {"trained_by": user_name()} if user_name() else None
    jobs = [worker.submit(cfg, data_root, force=force, meta=meta) for cfg in cfgs]
    ids = [j.id for j in jobs]
    for old in st.session_state.get(jobs_key(page), []):
        job = worker.get(old)
        if job is not None and job.active and old not in ids:
            ids.append(old)
    st.session_state[jobs_key(page)] = ids
    return jobs


def page_jobs(page: str, watch: Sequence[str | None] = ()) -> list[Job]:
    """This page's jobs, plus any job in flight for a run id it shows (another tab may have asked for it)."""
    worker = get_worker()
    ids: list[str] = list(st.session_state.get(jobs_key(page), []))
    for run_id in watch:
        job = worker.get(run_id) if run_id else None
        if job is not None and job.active and run_id not in ids:
            ids.append(run_id)
    st.session_state[jobs_key(page)] = ids
    return [j for j in (worker.get(i) for i in ids) if j is not None]


def _on(job: Job) -> str:
    """Where a job trains, for a sentence: " on this machine", " on tcp://10.0.0.5:40211", or nothing yet."""
    return f" on {job.where}" if job.where else ""


def _queued_text(job: Job) -> str:
    ahead = get_worker().queue_position(job.id)
    return f"Queued: {run_name(job.cfg.to_dict())}" + (f" ({ahead} run(s) ahead)." if ahead else ".")


def _status_line(plan: Plan, jobs: list[Job]) -> str:
    active = [j for j in jobs if j.active]
    if active:
        running = next((j for j in active if j.status == "running"), None)
        if running is None:
            return _queued_text(active[0]) if len(active) == 1 else f"Queued: {len(active)} run(s)."
        view = running.view()
        return f"Training {run_name(running.cfg.to_dict())}{_on(view)}: {view.message or 'starting'}."
    if plan.trained and plan.records:
        accs = ", ".join(fmt_acc(r.metrics.get("test_accuracy")) for r in plan.records if r is not None)
        return f"Trained: test accuracy {accs}."
    done = sum(r is not None for r in plan.records)
    return "Not trained yet with these settings." if not done else f"{done} of {len(plan.records)} trained."


def in_flight(run_ids: Sequence[str | None]) -> list[Job]:
    """The jobs queued or training for these run ids (asked by this page, another page or another tab)."""
    worker = get_worker()
    jobs = [worker.get(i) for i in run_ids if i]
    return [j for j in jobs if j is not None and j.active]


def not_trained_note(run_ids: Sequence[str | None], text: str) -> None:
    """Where a page's result would be: queued or training (with its place in the queue), else ``text``."""
    busy = in_flight(run_ids)
    if not busy:
        st.info(text)
    elif all(j.status == "queued" for j in busy):
        st.info(f"{_queued_text(busy[0])} Its results appear here once it is trained; **Cancel** is in the sidebar.")
    else:
        st.info("Training now (progress above); its results appear here when it ends.")


def train_panel(page: str, plan: Plan, data_root: str) -> bool:
    """The sidebar's section for this page's runs; True while one of them is queued or trains. Train is
    disabled while this plan's own runs are queued or training (Cancel stops them)."""
    jobs = page_jobs(page, plan.run_ids)
    running = any(j.active for j in jobs)
    usable = [c for c, i in zip(plan.configs, plan.run_ids, strict=True) if i is not None]
    busy = bool(in_flight(plan.run_ids))
    with st.sidebar:
        st.divider()
        st.markdown("**This page's run**")
        st.caption(_status_line(plan, [j for j in jobs if j.id in plan.run_ids] or jobs))
        label = f"Re{plan.label[0].lower()}{plan.label[1:]}" if plan.trained else plan.label  # Retrain (both)
        if st.button(label, key=f"{page}_train", type="primary", icon=":material/play_arrow:",
                     disabled=not usable or busy, width="stretch",
                     help="Trains in the background: keep exploring meanwhile. Retrain replaces the stored run(s)."):  # fmt: skip
            submit_runs(page, usable, data_root, force=plan.trained)
            running = True
        if running:
            st.button("Cancel", key=f"{page}_cancel", on_click=_cancel_all, args=(page,), width="stretch")
    return running


def _cancel_all(page: str) -> None:
    worker = get_worker()
    for job_id in st.session_state.get(jobs_key(page), []):
        worker.cancel(job_id)


def live_progress(page: str, watch: Sequence[str | None] = ()) -> None:
    """At the top of the page: the progress of this page's runs while one is active; their failures after."""
    jobs = page_jobs(page, watch)
    if any(j.active for j in jobs):
        _poll(page)
        return
    for job in jobs:
        if job.status == "failed":
            st.error(job.error or "Training failed.")
        elif job.status == "cancelled" and job.cfg is not None:
            st.warning(f"{run_name(job.cfg.to_dict())} was cancelled; nothing was saved.")


@st.fragment(run_every=1.0)
def _poll(page: str) -> None:
    jobs = [j for j in (get_worker().get(i) for i in st.session_state.get(jobs_key(page), [])) if j is not None]
    active = [j for j in jobs if j.active]
    if not active:
        st.rerun()  # the whole page, to draw the new results
        return
    finished = sum(j.status == "done" for j in jobs)
    if len(jobs) > 1:
        st.caption(f"Run {min(finished + 1, len(jobs))} of {len(jobs)} of this page's plan.")
    for job in active:
        _show_job(job, page)


def _show_job(job: Job, page: str) -> None:
    v = job.view()
    with st.container(border=True):
        if v.status == "queued":
            pos = get_worker().queue_position(v.id)
            st.markdown(f"**Queued**: {run_name(v.cfg.to_dict())}" + (f" ({pos} run(s) ahead)" if pos else ""))
            return
        elapsed = time.time() - (v.started or time.time())
        st.markdown(
            f"**Training** {run_name(v.cfg.to_dict())}{_on(v)}: {v.message or 'starting'} · {fmt_seconds(elapsed)}"
        )
        frac, text = _fraction(v.progress, v.message)
        st.progress(frac, text=text)
        latest = v.history[-1] if v.history else {}
        cols = st.columns(4)
        cols[0].metric("Train accuracy", fmt_acc(latest.get("accuracy")) if latest else "–")
        cols[1].metric("Validation accuracy", fmt_acc(latest.get("val_accuracy")) if latest else "–")
        eta = v.progress.get("eta_s")
        cols[2].metric(
            "Time left (this phase)",
            f"~{fmt_eta(eta)}" if eta is not None else "–",
            help="Estimated from the speed measured so far.",
        )
        cols[3].metric("Epoch", f"{v.progress.get('epoch', '–')} / {v.progress.get('epochs', '–')}")
        if v.history:
            draw_curves({run_name(v.cfg.to_dict()): v.history}, key=f"{page}_live_{v.id}")


def _fraction(p: dict, message: str) -> tuple[float, str]:
    kind = p.get("event")
    if kind in ("batch", "epoch"):
        epochs, epoch = int(p.get("epochs") or 1), int(p.get("epoch") or 1)
        if kind == "batch":
            batches = int(p.get("batches") or 1)
            done = ((epoch - 1) * batches + int(p.get("batch") or 0)) / (epochs * batches)
            return min(
                1.0, done
            ), f"{p.get('phase')} phase · epoch {epoch} of {epochs} · batch {p.get('batch')} of {batches}"
        return min(1.0, epoch / epochs), f"{p.get('phase')} phase · epoch {epoch} of {epochs} done"
    if kind in ("scan", "decode", "features", "prefix"):
        total = int(p.get("total") or 1)
        what = {"scan": "reading the dataset's files", "decode": "decoding images"}.get(kind, "backbone features")
        return min(1.0, int(p.get("done") or 0) / total), f"{what} · {p.get('done')} of {total} images"
    return 0.0, message or "starting"
