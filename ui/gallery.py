"""A gallery of a run's test images (its mistakes, most confident first) that can overlay where it looked.

``mistakes_gallery(record, indices, root, key=...)`` draws the test images ``indices`` (rows of the run's
stored predictions) with their top-3 probabilities; a toggle overlays each image's Grad-CAM heatmap of
the class the run predicted, at the run's default block (:mod:`core.explain.heatmaps`), computed once per image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from core.errors import SceneLabError
from core.explain.render import overlay
from core.store.folders import RunRecord
from ui import explain as ux
from ui.resources import thumbnail

THUMB = 128  # pixels: gallery images


@st.cache_data(max_entries=256, show_spinner=False)
def predicted_heatmap(run_id: str, artifacts: str, path: str, mtime_ns: int) -> tuple[np.ndarray, str] | None:
    """(Grad-CAM heatmap of the predicted class at the run's default block, that class) for one image file;
    None when the image or the run cannot be read any more."""
    try:
        inspector = ux.run_inspector(run_id, artifacts)
        image = ux.decode_path(path, inspector.image_size, mtime_ns)
        e = ux.explained(("run", run_id, artifacts), image, inspector.default_layer, "gradcam", None)
    except (SceneLabError, OSError, ValueError):
        return None
    return e.heatmap, (inspector.classes or [])[e.class_index]


def mistakes_gallery(
    record: RunRecord, indices: np.ndarray, root: Path, *, key: str, limit: int = 18, per_row: int = 6
) -> None:
    """The test images ``indices`` of ``record`` (at most ``limit``), with an optional heatmap overlay."""
    if len(indices) == 0:
        return
    preds = record.predictions()
    if preds is None:
        st.warning("This run has no stored test predictions, so its images cannot be shown.")
        return
    classes = list(record.metrics.get("classes") or record.config.get("dataset", {}).get("classes", []))
    probs = preds["probs"]
    shown = list(indices[:limit])
    maps = st.toggle(
        "Show where the run looked", key=f"{key}_gallery_maps",
        help="Overlays each image's Grad-CAM heatmap of the class the run predicted (red = the strongest evidence), "
        "at its default block; page 6 explains one image in depth, with other methods and blocks.",
    )  # fmt: skip
    artifacts = str(record.path.parent.parent)
    cols = st.columns(per_row)
    for n, k in enumerate(shown):
        rel = str(preds["paths"][k])
        full = root / rel
        img = thumbnail(str(full), THUMB)
        top = np.argsort(-probs[k])[:3]
        caption = " · ".join(f"{classes[c]} {probs[k, c]:.0%}" for c in top)
        with cols[n % per_row]:
            if img is None:
                st.caption(f"{rel} (cannot be read any more)")
                continue
            if maps:
                with st.spinner("Where it looked…"):
                    got = predicted_heatmap(record.run_id, artifacts, str(full), _mtime(full))
                if got is not None:
                    img = overlay(img, got[0])
                    caption += f" — evidence for {got[1]}"
            st.image(img, caption=f"{caption} — {Path(rel).name}", width="stretch")
    if len(indices) > len(shown):
        st.caption(f"…and {len(indices) - len(shown)} more.")


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return 0
