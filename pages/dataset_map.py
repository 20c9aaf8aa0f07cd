"""Dataset map: every image as a point, placed by what a network computes for it, before and after fine-tuning.

The pooled features of every train and test image, projected to 2-D (PCA, t-SNE, or UMAP where umap-learn is
installed), coloured by true class, with the run's test mistakes marked; the ImageNet backbone (not
fine-tuned) on the left, a trained run on the right. A click on a point shows its image and rings it in both
maps. All the work is in :mod:`core.explain.projection`; projections are cached in the artifacts folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import streamlit as st

from core.errors import SceneLabError
from core.explain.projection import METHODS, project_pair
from core.store.folders import Store
from ui import explain as ux
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.resources import all_runs, thumbnail
from ui.settings import settings

P = "map"

ensure_router()
st.title("Dataset map")
st.caption(
    "Each dot is one image, placed by the features a network computes for it: images the network finds alike "
    "sit close together. Before fine-tuning the classes overlap; after it they should separate."
)
info = require_dataset()
s = settings()


@st.cache_data(max_entries=16, show_spinner=False)
def projected(data: str, artifacts: str, backbone: str, weights: str, size: int, remove_blocks: int,
              run_id: str | None, method: str) -> tuple[Any, ...]:  # fmt: skip
    """(rows, summary) of the backbone's map, then of the run's (None, None without a run), computed side by side."""
    store = Store(artifacts)
    run = store.load_run(run_id) if run_id else None
    mine, theirs = project_pair(data, backbone=backbone, weights=weights, image_size=size, store=store, run=run,
                                method=method, remove_blocks=remove_blocks)  # fmt: skip
    return mine.rows(), mine.summary(), *((theirs.rows(), theirs.summary()) if theirs is not None else (None, None))


prints = {info.fingerprint, info.legacy_fingerprint}
by_id = {r.run_id: r for r in all_runs() if r.config.get("dataset", {}).get("fingerprint") in prints}
rows = {row["run_id"]: row for row in ux.run_rows(s["artifacts"]) if row["run_id"] in by_id}
order = ux.opening_order(list(rows.values()))  # the fine-tuned run of the best pair first (validation accuracy)
records = [by_id[i] for i in order]
methods = [m for m in METHODS if m != "umap" or importlib.util.find_spec("umap") is not None]
c1, c2 = st.columns([3, 2])
run_id = c1.selectbox(
    "Run", order or [None],
    format_func=lambda k: ux.run_label(rows[k]) if k in rows else "no trained run on this dataset yet",
    key=f"{P}_run", help="A run trained on this dataset (a fine-tuned run with a head-only twin first, then by "
    "validation accuracy). Its map sits beside the frozen ImageNet backbone's, and its test mistakes are marked on both.",
)  # fmt: skip
method = c2.radio(
    "Projection", methods, format_func=METHODS.get, horizontal=True, key=f"{P}_method",
    help="PCA: the two directions along which the features vary most (instant, faithful to large distances). "
    "t-SNE: keeps each image's nearest neighbours together (clusters show better; distances between clusters "
    "mean little); about ten seconds the first time, then read from the cache.",
)  # fmt: skip
record = next((r for r in records if r.run_id == run_id), None)
cfg = record.config["run"] if record is not None else {"backbone": s["backbone"], "weights": s["weights"],
                                                       "image_size": s["image_size"], "remove_blocks": 0}  # fmt: skip
try:
    with st.spinner(f"Projecting every image with {METHODS[method]} (features are computed once, then cached)…"):
        left, left_info, right, right_info = projected(
            s["data_root"], s["artifacts"], cfg["backbone"], cfg["weights"], cfg["image_size"],
            cfg.get("remove_blocks", 0), record.run_id if record is not None else None, method)  # fmt: skip
except SceneLabError as exc:
    st.error(str(exc))
    st.stop()

mistakes = {r["path"] for r in right if r["split"] == "test" and r["predicted"] != r["class"]} if right else set()
predicted = {r["path"]: r["predicted"] for r in right} if right else {}
left_df = ux.map_frame([{**r, "predicted": predicted.get(r["path"], "")} for r in left], mistakes)
selected = st.session_state.get(f"{P}_selected")


def on_pick(chart_key: str) -> None:
    state = st.session_state.get(chart_key) or {}
    picked = (state.get("selection") or {}).get("pick") or []
    if picked and picked[0].get("path"):
        st.session_state[f"{P}_selected"] = picked[0]["path"]


cols = st.columns(2 if right else 1)
with cols[0]:
    frozen = f"frozen {ux.backbone_label(cfg['backbone'])}"  # what a head-only run trains on
    before_title = f"Before: {frozen}" if right else frozen
    st.altair_chart(ux.map_chart(left_df, before_title, selected), key=f"{P}_left",
                    on_select=lambda: on_pick(f"{P}_left"), selection_mode="pick")  # fmt: skip
    st.caption(
        f"{METHODS[method]} of the {left_info['space']} of {left_info['rows']} images"
        + (": what a head-only run trains on." if right else ".")
    )
if right:
    with cols[1]:
        right_df = ux.map_frame(right, mistakes)
        after = "head-only run (backbone frozen)" if cfg.get("phase") == "head" else "fine-tuned run"
        st.altair_chart(ux.map_chart(right_df, f"After: {after}", selected), key=f"{P}_right",
                        on_select=lambda: on_pick(f"{P}_right"), selection_mode="pick")  # fmt: skip
        st.caption(f"{METHODS[method]} of the {right_info['space']} of {right_info['model']}; crosses mark its "
                   f"{right_info['test_mistakes']} test mistakes (also on the left).")  # fmt: skip
else:
    st.info("Train a run on this dataset (pages 0-5) to see its map beside this one, with its test mistakes marked.")

st.caption("Colour: the image's true class. Small dots: training images; squares: test images; crosses: test images "
           "the run got wrong. Hover over a point for its class and file; click it to see the image below, ringed "
           "in both maps.")  # fmt: skip
if selected:
    hit = left_df[left_df["path"] == selected]
    if len(hit):
        row = hit.iloc[0]
        img = thumbnail(str(Path(info.root) / selected), 192)
        a, b = st.columns([1, 3])
        if img is not None:
            a.image(img, width="stretch")
        verdict = f"predicted **{row['predicted']}**" if row["predicted"] else "no run to predict it"
        b.markdown(f"**{Path(selected).name}** · {row['split']} image · true class **{row['class']}** · {verdict}")
        b.caption(f"`{selected}`")
