"""What page 6 and the mistakes gallery share: models taken apart once, image sources, block names, maps.

Models are loaded once per process (``st.cache_resource``: an :class:`core.explain.activations.Inspector` per run
and per ImageNet backbone and size); explanations are cached per image, block, method and class
(``st.cache_data``), so moving the opacity slider redraws without recomputing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from core.data.decode import UPLOAD_TYPES, decode_image, decode_upload
from core.data.scan import test_images
from core.errors import SceneLabError, StoreError
from core.explain.activations import Inspector, imagenet_inspector
from core.explain.heatmaps import METHODS, Comparison, Explanation, compare, explain
from core.explain.render import DIVERGING, JET, colorbar
from core.models.backbones import BACKBONES, get_backbone
from core.store.folders import Store
from core.training.ensemble import explained_record
from core.training.runs import load_classifier

SOURCE_TEST, SOURCE_UPLOAD, SOURCE_CAMERA = "Test-set image", "Upload a photo", "Camera"
METHOD_HELP = {
    "gradcam": "The class score's gradient at the block, averaged per channel, weighs the channels. One pass.",
    "gradcam++": "Like Grad-CAM, but weighs only positive gradients, so several separate regions of the class "
    "all count. One pass.",
    "scorecam": "No gradients: each of the 64 most varied channels masks the image, and how sure the model "
    "stays of the class is that channel's weight. 64 passes.",
    "occlusion": "A grey square a quarter of the image wide slides over it; red is where covering the image "
    "lowers the class probability most. 100 passes; the same for every block.",
}


# -- models and stored runs ------------------------------------------------------------------------------
@st.cache_resource(max_entries=4, show_spinner=False)
def store_at(artifacts: str) -> Store:
    return Store(artifacts)


@st.cache_resource(max_entries=4, show_spinner=False)
def run_inspector(run_id: str, artifacts: str) -> Inspector:
    """A trained run's classifier, taken apart once (blocks compile in the background when first used)."""
    record = store_at(artifacts).load_run(run_id)
    if record is None:
        raise StoreError(f"Run {run_id} is no longer in {artifacts}; pick another run or train it again.")
    record = explained_record(record, store_at(artifacts))  # an ensemble: its first run's network
    return Inspector(load_classifier(record), classes=record.config["dataset"]["classes"])


@st.cache_resource(max_entries=4, show_spinner=False)
def backbone_inspector(backbone: str, image_size: int) -> Inspector:
    """The backbone with its ImageNet weights (and ImageNet top, where the registry has one)."""
    return imagenet_inspector(backbone, image_size)


def imagenet_size(backbone: str) -> int:
    """The size the backbone's ImageNet weights were trained at (the registry's): where its ImageNet view belongs."""
    return get_backbone(backbone).imagenet_size


#: what differs between a fine-tuned run and the head-only run of the same settings (its "before")
FINE_TUNING_ONLY = ("phase", "full_epochs", "full_lr", "freeze_blocks")
PHASE_WORDS = {"head": "head only, backbone frozen", "head+full": "fine-tuned (head, then the whole network)",
               "full": "fine-tuned (every layer from the start)",
               "head+last": "fine-tuned (head, then the last blocks; the first ones frozen)",
               "last": "fine-tuned (the last blocks; the first ones frozen)"}  # fmt: skip


def _phase(run: dict[str, Any]) -> str:
    """The run's phase in PHASE_WORDS' terms: a frozen prefix makes "the whole network" its last blocks."""
    phase = str(run.get("phase", "?"))
    if run.get("freeze_blocks") and phase in ("head+full", "full"):
        return {"head+full": "head+last", "full": "last"}[phase]
    return phase


def settings_key(run: dict[str, Any], fingerprint: Any) -> str:
    """The run's settings without what only fine-tuning uses: a fine-tuned run and its head-only twin share it."""
    rest = {k: v for k, v in run.items() if k not in FINE_TUNING_ONLY}
    return json.dumps({"run": rest, "data": fingerprint}, sort_keys=True, default=str)


@st.cache_data(ttl=10, max_entries=4, show_spinner=False)
def run_rows(artifacts: str) -> list[dict[str, Any]]:
    """One small dict per stored run, best validation accuracy first (then newest): the app selects on
    validation, never on test. ``twin``: a fine-tuned run's head-only run of the same settings, or the reverse."""
    rows = []
    for r in store_at(artifacts).list_runs():
        run, ds = r.config.get("run", {}), r.config.get("dataset", {})
        rows.append(
            {
                "run_id": r.run_id, "dataset": ds.get("name") or Path(str(ds.get("root", "?"))).name,
                "root": ds.get("root"), "backbone": run.get("backbone", "?"), "weights": run.get("weights", "?"),
                "image_size": run.get("image_size"), "phase": _phase(run),
                "test_accuracy": r.metrics.get("test_accuracy"), "val_accuracy": r.metrics.get("val_accuracy"),
                "classes": list(ds.get("classes") or []), "created": r.config.get("created") or "",
                "base_trained": bool(r.config.get("base_trained")), "key": settings_key(run, ds.get("fingerprint")),
            }
        )  # fmt: skip
    rows.sort(key=lambda row: row["created"], reverse=True)
    rows.sort(key=lambda row: -(row["val_accuracy"] or 0.0))
    heads = {}
    for row in rows:
        if row["phase"] == "head":
            heads.setdefault(row["key"], row["run_id"])
    for row in rows:
        row["twin"] = None
        if row["phase"] != "head" and row["key"] in heads:
            row["twin"] = heads[row["key"]]
    tuned = {row["twin"]: row["run_id"] for row in reversed(rows) if row["twin"]}  # the best fine-tuned run wins
    for row in rows:
        if row["phase"] == "head":
            row["twin"] = tuned.get(row["run_id"])
    return rows


def opening_order(rows: list[dict[str, Any]]) -> list[str]:
    """Run ids, the page's first choice first: the fine-tuned run of the best pair (a fine-tuned run with its
    head-only twin, by validation accuracy), then every other run by validation accuracy."""
    paired = [r["run_id"] for r in rows if r["phase"] != "head" and r["twin"]]
    return paired + [r["run_id"] for r in rows if r["run_id"] not in set(paired)]


def run_label(row: dict[str, Any]) -> str:
    """``<dataset> · <backbone> (<weights>) · <size> px · <what was trained> · validation 0.9 · test 0.9 · id``."""
    val, test = row.get("val_accuracy"), row["test_accuracy"]
    accs = f"validation {fmt_acc(val)} · test {fmt_acc(test)}"
    return (f"{row['dataset']} · {backbone_label(row['backbone'])} ({row['weights']}) · {row['image_size']} px · "
            f"{PHASE_WORDS.get(row['phase'], row['phase'])} · {accs} · {row['run_id']}")  # fmt: skip


def backbone_label(name: str) -> str:
    """The backbone's display name from the registry ("EfficientNet-Lite0"); the name itself if unknown."""
    return BACKBONES[name].label if name in BACKBONES else str(name)


def backbones_with_top() -> str:
    """The backbones whose ImageNet classifier the registry has (they predict ImageNet classes), by name."""
    return " or ".join(b.label for b in BACKBONES.values() if b.imagenet_top is not None) or "none"


def fmt_acc(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else "–"


# -- explanations (cached per image, block, method, class) -------------------------------------------------
@st.cache_data(max_entries=64, show_spinner=False)
def explained(
    model: tuple[str, ...], image: np.ndarray, layer: str, method: str, class_index: int | None
) -> Explanation:
    """``model`` is ("run", run id, artifacts) or ("imagenet", backbone, size)."""
    return explain(_inspector(model), image, method=method, layer=layer, class_index=class_index)


@st.cache_data(max_entries=32, show_spinner=False)
def compared(
    run: tuple[str, ...], before: tuple[str, ...], image: np.ndarray, layer: str, method: str, class_index: int | None
) -> Comparison:
    return compare(_inspector(before), _inspector(run), image, method=method, layer=layer, class_index=class_index)


def _inspector(model: tuple[str, ...]) -> Inspector:
    if model[0] == "run":
        return run_inspector(model[1], model[2])
    return backbone_inspector(model[1], int(model[2]))


# -- words -------------------------------------------------------------------------------------------------
def block_label(inspector: Inspector, layer: str) -> str:
    """ "Block 5, unit 3 · 8×8" (plain words and the map's size at this image size)."""
    h, w, _ = inspector.layer_shape(layer)
    return f"{inspector.block_name(layer)} · {h}×{w}"


def block_caption(inspector: Inspector, layer: str) -> str:
    h, w, c = inspector.layer_shape(layer)
    return f"{inspector.block_name(layer)} (`{layer}`): {h}×{w} cells of {c} channels at {inspector.image_size} px."


def method_label(method: str) -> str:
    return METHODS[method]


# -- an image from the test set, an upload or the camera ---------------------------------------------------
@st.cache_data(ttl=60, max_entries=16, show_spinner=False)
def _test_images(root: str) -> dict[str, list[str]]:
    return test_images(root)


@st.cache_data(max_entries=64, show_spinner=False)
def decode_path(path: str, size: int, mtime_ns: int) -> np.ndarray:
    return decode_image(path, size)


@st.cache_data(max_entries=16, show_spinner=False)
def _decode_upload(data: bytes, size: int, name: str) -> np.ndarray:
    return decode_upload(data, size, name=f"The file {name}")


def pick_image(key: str, root: str, size: int) -> tuple[np.ndarray | None, str, str | None, bool]:
    """The image widgets: (image at ``size`` or None, its name, its true class if known, an error was shown)."""
    source = st.radio("Image", (SOURCE_TEST, SOURCE_UPLOAD, SOURCE_CAMERA), horizontal=True, key=f"{key}_source")
    if source in (SOURCE_UPLOAD, SOURCE_CAMERA):
        if source == SOURCE_UPLOAD:
            got = st.file_uploader("Photo (JPEG, PNG, BMP, GIF or WEBP, at most 40 megapixels)",
                                   type=list(UPLOAD_TYPES), key=f"{key}_upload")  # fmt: skip
        else:
            got = st.camera_input("Take a photo", key=f"{key}_camera")
        if got is None:
            return None, "", None, False
        try:
            return _decode_upload(got.getvalue(), size, got.name), got.name, None, False
        except SceneLabError as exc:
            st.error(str(exc))
            return None, "", None, True
    try:
        per_class = {c: p for c, p in (_test_images(root) if root else {}).items() if p}
    except SceneLabError as exc:
        st.warning(f"{exc} Upload a photo instead.")
        per_class = {}
    if not per_class:
        if not root:
            st.info("No dataset folder is set (sidebar): upload a photo instead.")
        return None, "", None, False
    cols = st.columns(2)
    cls = cols[0].selectbox("Class", list(per_class), key=f"{key}_class")
    path = cols[1].selectbox("Test image", per_class[cls], format_func=lambda p: Path(p).name, key=f"{key}_image")
    try:
        return decode_path(path, size, Path(path).stat().st_mtime_ns), f"test/{cls}/{Path(path).name}", cls, False
    except (SceneLabError, OSError) as exc:
        st.error(f"The test image {path} cannot be read ({exc}); pick another one.")
        return None, "", None, True


# -- pictures ----------------------------------------------------------------------------------------------
def enlarge(image: np.ndarray, size: int = 256) -> np.ndarray:
    if image.shape[0] >= size:
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def probability_bars(pairs: list[tuple[str, float]], *, highlight: str | None = None) -> alt.Chart:
    """Horizontal bars of class probabilities (as percentages), most probable on top."""
    df = pd.DataFrame(pairs, columns=["class", "probability"])
    df["explained"] = df["class"] == highlight
    bars = alt.Chart(df).mark_bar().encode(
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%", tickCount=3), title=None),
        y=alt.Y("class:N", sort=list(df["class"]), title=None, axis=alt.Axis(labelLimit=120)),
        color=alt.condition("datum.explained", alt.value("#d6604d"), alt.value("#4c78a8")),
        tooltip=["class", alt.Tooltip("probability:Q", format=".1%")],
    )  # fmt: skip
    text = bars.mark_text(align="left", dx=2, fontSize=11).encode(text=alt.Text("probability:Q", format=".1%"))
    return alt.layer(bars, text).properties(height=alt.Step(20))


def legends(with_difference: bool) -> None:
    """Colour strips saying what the colours of the maps mean."""
    cols = st.columns(2 if with_difference else 1)
    with cols[0]:
        st.image(colorbar(JET, 256, 10), width="stretch")
        st.caption("Heatmaps: blue = no evidence for the explained class, red = the strongest evidence "
                   "(each map scaled to its own maximum).")  # fmt: skip
    if with_difference:
        with cols[1]:
            st.image(colorbar(DIVERGING, 256, 10), width="stretch")
            st.caption("Difference (after − before, the same class): red = the fine-tuned run looks there more than "
                       "the head-only run, blue = less, white = the same.")  # fmt: skip


# -- the dataset map ---------------------------------------------------------------------------------------
KINDS = ("train image", "test image", "test mistake")


def map_chart(df: pd.DataFrame, title: str, selected: str | None) -> alt.LayerChart:
    """A 2-D map of the dataset: colour = true class, shape = train / test / test mistake; a click selects
    an image (selection ``pick`` over ``path``), the selected one ringed."""
    pick = alt.selection_point(name="pick", fields=["path"], on="click", clear=False)
    enc = {"x": alt.X("x:Q", axis=None), "y": alt.Y("y:Q", axis=None)}
    legend = {"orient": "bottom", "direction": "horizontal"}
    wrong = f"datum.kind == '{KINDS[2]}'"
    points = alt.Chart(df).mark_point(filled=True, opacity=0.8).encode(
        **enc,
        color=alt.Color("class:N", scale=alt.Scale(scheme="tableau10"),
                        legend=alt.Legend(title="True class", columns=4, symbolLimit=0, **legend)),
        shape=alt.Shape("kind:N", scale=alt.Scale(domain=list(KINDS), range=["circle", "square", "cross"]),
                        legend=alt.Legend(title="Point", columns=1, **legend)),
        size=alt.Size("kind:N", scale=alt.Scale(domain=list(KINDS), range=[12, 30, 140]),
                      legend=alt.Legend(title="Point", columns=1, **legend)),
        stroke=alt.condition(wrong, alt.value("black"), alt.value(None)),
        strokeWidth=alt.condition(wrong, alt.value(1.2), alt.value(0)),
        order=alt.Order("rank:Q"),  # mistakes drawn last, on top
        tooltip=[alt.Tooltip("class:N", title="true class"), "split:N", "predicted:N", "path:N"],
    ).add_params(pick)  # fmt: skip
    layers: list[alt.Chart] = [points]
    if selected is not None and (df["path"] == selected).any():
        ring = alt.Chart(df[df["path"] == selected]).mark_point(size=420, strokeWidth=3, color="black", filled=False)
        layers.append(ring.encode(**enc))
    return alt.layer(*layers).properties(title=title, height=420)


def map_frame(rows: list[dict[str, Any]], mistakes: set[str]) -> pd.DataFrame:
    """A projection's rows with each point's kind (train, test, test mistake of the run)."""
    df = pd.DataFrame(rows)
    df["kind"] = np.where(df["split"] == "train", KINDS[0], np.where(df["path"].isin(mistakes), KINDS[2], KINDS[1]))
    df["rank"] = df["kind"].map({k: i for i, k in enumerate(KINDS)})
    return df
