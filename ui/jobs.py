"""Training jobs on a page: submit runs to the app's worker, follow their progress live, cancel them."""

from __future__ import annotations

import time
from collections.abc import Iterable

import streamlit as st

from core.config import RunConfig
from core.worker import Job
from ui.charts import curves_chart
from ui.format import fmt_eta, fmt_seconds, job_label
from ui.resources import get_worker


def show_job(job: Job, key_prefix: str = "job") -> None:
    """Progress of a worker job: status, epoch x/y, batch bar, current metrics, time left, Cancel."""
    v = job.view()
    label = job_label(v.cfg)
    if v.status == "queued":
        pos = get_worker().queue_position(v.id)
        ahead = f"; {pos} run(s) ahead of it" if pos else ""
        with st.container(border=True):
            st.markdown(f"**Queued** run `{v.id}` ({label}){ahead}.")
            st.button("Cancel", key=f"{key_prefix}_cancel_{v.id}", on_click=get_worker().cancel, args=(v.id,))
        return
    if v.status == "failed":
        st.error(v.error or "Training failed.")
        return
    if v.status == "cancelled":
        st.warning(f"Run `{v.id}` was cancelled; nothing was saved.")
        return
    if v.status == "done":
        st.success(f"Run `{v.id}` finished" + (" (it was already stored)." if v.cached else "."))
        return
    # running
    p = v.progress
    kind = p.get("event")
    with st.container(border=True):
        elapsed = time.time() - (v.started or time.time())
        st.markdown(f"**Training** run `{v.id}` ({label}) — {v.message or 'starting'} · running for {fmt_seconds(elapsed)}")
        if kind in ("batch", "epoch"):
            epochs = int(p.get("epochs") or 1)
            epoch = int(p.get("epoch") or 1)
            if kind == "batch":  # the bar: this phase's batches done, over all its epochs
                batches = int(p.get("batches") or 1)
                frac = min(1.0, ((epoch - 1) * batches + int(p.get("batch") or 0)) / (epochs * batches))
                text = f"{p.get('phase')} phase · epoch {epoch}/{epochs} · batch {p.get('batch')}/{batches}"
            else:
                frac = min(1.0, epoch / epochs)
                text = f"{p.get('phase')} phase · epoch {epoch}/{epochs} done"
            st.progress(frac, text=text)
        elif kind == "features":
            total = int(p.get("total") or 1)
            st.progress(min(1.0, int(p.get("done") or 0) / total), text=f"backbone features · {p.get('done')}/{total} images")
        else:
            st.progress(0.0, text=v.message or "starting")
        logs = p.get("logs") or {}
        latest = v.history[-1] if v.history else {}
        cols = st.columns(5)
        cols[0].metric("loss", f"{logs.get('loss', latest.get('loss', float('nan'))):.4f}" if (logs or latest) else "–")
        cols[1].metric("accuracy", f"{logs.get('accuracy', latest.get('accuracy', float('nan'))):.3f}" if (logs or latest) else "–")
        cols[2].metric("val loss", f"{latest['val_loss']:.4f}" if latest else "–")
        cols[3].metric("val accuracy", f"{latest['val_accuracy']:.3f}" if latest else "–")
        eta = p.get("eta_s")
        phase_note = " (this phase)" if v.cfg.phase == "head+full" and p.get("phase") == "head" else ""
        cols[4].metric("time left" + phase_note, f"~{fmt_eta(eta)}" if eta is not None else "–",
                       help="Estimated from the speed measured so far.")
        st.button("Cancel", key=f"{key_prefix}_cancel_{v.id}", on_click=get_worker().cancel, args=(v.id,))
        if v.history:
            st.altair_chart(curves_chart({v.id: v.history}), key=f"{key_prefix}_live_{v.id}")


def jobs_key(prefix: str) -> str:
    return f"{prefix}_jobs"


def submit_runs(prefix: str, cfgs: Iterable[RunConfig], data_root: str) -> list[Job]:
    """Ask the worker for ``cfgs`` and remember them as this page's jobs (with its earlier ones still running)."""
    worker = get_worker()
    jobs = [worker.submit(cfg, data_root) for cfg in cfgs]
    ids = [j.id for j in jobs]
    for old in st.session_state.get(jobs_key(prefix), []):
        job = worker.get(old)
        if job is not None and job.active and old not in ids:
            ids.append(old)
    st.session_state[jobs_key(prefix)] = ids
    return jobs


def track_jobs(prefix: str, watch: Iterable[str | None] = ()) -> bool:
    """Show this page's jobs, polling once a second while one is active; True while one is.

    ``watch`` lists run ids the page shows: one already in flight (another tab asked for it) is
    followed too."""
    worker = get_worker()
    ids: list[str] = list(st.session_state.get(jobs_key(prefix), []))
    for run_id in watch:
        job = worker.get(run_id) if run_id else None
        if job is not None and job.active and run_id not in ids:
            ids.append(run_id)
    st.session_state[jobs_key(prefix)] = ids
    jobs = [j for j in (worker.get(i) for i in ids) if j is not None]
    if any(j.active for j in jobs):
        _poll(prefix)
        return True
    for job in jobs:
        if job.status in ("failed", "cancelled"):
            show_job(job, prefix)
    return False


@st.fragment(run_every=1.0)
def _poll(prefix: str) -> None:
    worker = get_worker()
    jobs = [j for j in (worker.get(i) for i in st.session_state.get(jobs_key(prefix), [])) if j is not None]
    for job in jobs:
        if job.status != "done":
            show_job(job, prefix)
    if not any(j.active for j in jobs):
        st.rerun()  # the whole page, to draw the new results
