"""Task 3: data augmentation as the cure for the small set's overfitting; previewed live, then trained."""

from __future__ import annotations

import dataclasses

import pandas as pd
import streamlit as st

from core.config import AUGMENT_SETTINGS, AugmentConfig
from core.errors import SceneLabError
from core.study import reference as ref
from core.study.plan import DEFAULT_GRID_SAMPLE, SMALL, STUDY_BEST_AUG, augmentation_grid, main_effects
from ui import handover, panel
from ui.charts import draw_curves, effects_chart
from ui.compat import ensure_router
from ui.datasource import require_dataset
from ui.findings import finding
from ui.format import augment_label, fmt_acc, fmt_signed
from ui.jobs import Plan, live_progress, not_trained_note, submit_runs, train_panel
from ui.links import apply_page_link, link_notice, write_link
from ui.preview import augmented, load_images, mosaic, preview_files
from ui.resources import lookup, runs_like
from ui.settings import settings
from ui.strip import result_strip

P = "augmentation"
AUG_FIELDS = tuple(AUGMENT_SETTINGS)
SLIDERS = tuple(f for f, info in AUGMENT_SETTINGS.items() if info.kind == "float")
TOGGLES = tuple(f for f, info in AUGMENT_SETTINGS.items() if info.kind == "bool")
SLIDER_MAX = {"rotation": 180.0}  # the fractions' sliders stop at 0.5
FIELDS = (*(f"augment.{k}" for k in AUG_FIELDS), "train_per_class", "epochs", "lr", "aug_copies")
STUDY_AUG = {f"augment.{k}": v for k, v in dataclasses.asdict(STUDY_BEST_AUG).items() if v}  # the study's setting
DEFAULTS = {
    **panel.defaults(P, FIELDS, {"train_per_class": SMALL, **STUDY_AUG}),
    f"{P}_preview_seed": 0,
    f"{P}_grid_n": DEFAULT_GRID_SAMPLE,
}
TRAINING_SETS = {SMALL: f"the small set ({SMALL} per class, the study's)", None: "every training image"}


def reshuffle() -> None:
    st.session_state[f"{P}_preview_seed"] = int(st.session_state[f"{P}_preview_seed"]) + 1


ensure_router()  # a deep link into a fresh server runs this page alone: hand over to app.py
st.title("3 · Augmentation")
st.markdown(
    "The study's cure for the small set's overfitting (page 2): show the network transformed copies of each "
    "training image so that it learns what does not matter (a mirrored coast is still a coast). Move a control "
    "and the preview follows; train, and compare in the table and the grid below."
)
info = require_dataset()
s = settings()
handover.setup_widgets(P, panel.field_keys(P, FIELDS), DEFAULTS)
apply_page_link(P, FIELDS)
link_notice()
handover.show_loaded_extras(P)
ss = st.session_state
progress_area = st.container()  # where training progress shows: just under the title, above the fold

sliders, switches, shown = st.columns([1, 1, 1.6])  # one screen: controls beside the preview, results under it
with sliders:
    for field in SLIDERS:
        panel.widget(P, f"augment.{field}", style="slider", max_value=SLIDER_MAX.get(field, 0.5))
with switches:
    for field in TOGGLES:
        panel.widget(P, f"augment.{field}")
    panel.bind(
        panel.key(P, "train_per_class"),
        st.radio,
        "Training set",
        list(TRAINING_SETS),
        format_func=TRAINING_SETS.get,
        help="The study ran augmentation on its small set (task 2).",
    )
    e1, e2 = st.columns(2)
    panel.widget(
        P, "epochs", e1, help="Augmented images go through the frozen backbone every epoch: slower than a plain head."
    )
    panel.widget(P, "lr", e2)
    panel.widget(P, "aug_copies")  # its help, declared once in RunConfig, says it is a named shortcut
values = panel.values(P, FIELDS)
if values["aug_copies"] and not values["augment"].is_identity():
    switches.caption(f"Shortcut on: {values['aug_copies']} augmented copies cycled over the epochs, not a fresh "
                     "augmentation each epoch as the study drew.")  # fmt: skip
aug = values["augment"]
with shown:
    files = preview_files(info)
    images = load_images(str(info.root), tuple(files), s["image_size"])
    try:
        out = augmented(images, dataclasses.asdict(aug), int(ss[f"{P}_preview_seed"]))
    except SceneLabError as exc:
        st.error(str(exc))
        out = images
    st.image(mosaic(images, columns=4), width="stretch", caption=f"{len(files)} training images, unchanged")
    st.image(mosaic(out, columns=4), width="stretch", caption=f"augmented: {augment_label(dataclasses.asdict(aug))}")
    st.button(
        "Reshuffle",
        key=f"{P}_reshuffle",
        icon=":material/shuffle:",
        on_click=reshuffle,
        help="Draw other random transformations of the same images.",
    )

cfg = handover.page_config(P, {"phase": "head"}, values)
if cfg is None:
    st.stop()
run_id, record = lookup(cfg, s["data_root"])
handover.check_opened(run_id, cfg)
baseline_cfg = cfg.replace(augment=type(aug)())
baseline_id, baseline = lookup(baseline_cfg, s["data_root"])
grid_cfgs = [cfg.replace(augment=a) for a in augmentation_grid(int(ss[f"{P}_grid_n"]), seed=s["seed"])]
grid = [lookup(c, s["data_root"]) for c in grid_cfgs]
train_panel(P, Plan([cfg], [run_id], [record]), s["data_root"])
write_link(P, FIELDS, DEFAULTS)
with progress_area:
    live_progress(P, watch=[run_id, baseline_id, *(i for i, _ in grid)])

if record is not None:  # the result first: above the fold on a laptop, under the controls and the preview
    result_strip(record, page=P, previous=baseline if baseline is not None and baseline.run_id != record.run_id else None,
                 versus="none")  # fmt: skip
finding_area = st.container()  # filled once the stored runs are read (below)
if record is not None:
    other = baseline is not None and baseline.run_id != record.run_id
    draw_curves({"these augmentations": record.history, **({"no augmentation": baseline.history} if other else {})},
                key=f"{P}_curves")  # fmt: skip
else:
    not_trained_note([run_id], "Not trained yet with these augmentations: press **Train** in the sidebar.")

st.caption(f"The study's best was {ref.AUGMENTATION_BEST['setting']} at {ref.AUGMENTATION_BEST['accuracy']:.3f} on its "
           f"small set ({ref.SELECTION_NOTE}; its summary table also gives {ref.AUGMENTATION_BEST['summary_table']:.3f}).")  # fmt: skip
st.subheader("The study's grid (seven on/off factors) and every run with these settings")
g1, g2 = st.columns([1, 3])
g1.number_input(
    "Grid points",
    min_value=2,
    max_value=128,
    step=1,
    key=f"{P}_grid_n",
    help="A seeded sample of the 128 combinations (always with the baseline and the study's best); 128 = all.",
)
missing = [c for c, (i, r) in zip(grid_cfgs, grid, strict=True) if i is not None and r is None]
if g2.button(
    f"Train the grid ({len(missing)} of {len(grid_cfgs)} not trained yet)",
    key=f"{P}_train_grid",
    disabled=not missing,
    help="Rotation 20°, shifts 0.2, shear 0.2, zoom 0.2, horizontal and vertical flip, each on or off.",
):
    submit_runs(P, missing, s["data_root"])
    st.rerun()
done = {r.run_id: (c.augment, r) for c, (_, r) in zip(grid_cfgs, grid, strict=True) if r is not None}
same = {k: v for k, v in cfg.to_dict().items() if k != "augment"}
for r in runs_like(info, cfg):  # every other stored run with these training settings
    run = dict(r.config["run"])
    if run.pop("augment", None) is not None and run == same and r.run_id not in done:
        done[r.run_id] = (AugmentConfig(**r.config["run"]["augment"]), r)
done = list(done.values())
augmented = [(augment_label(dataclasses.asdict(a)), r) for a, r in done if a != AugmentConfig()]
finding_area.markdown(finding("augmentation", augmented, ("no augmentation", baseline),
                              "Train these settings with and without augmentation (**Train**, or train the grid below) "
                              "to see whether augmentation helps on this data."))  # fmt: skip
if done:
    base_acc = baseline.metrics.get("test_accuracy") if baseline is not None else None
    table = pd.DataFrame([{
        "augmentation": augment_label(dataclasses.asdict(a)), "test accuracy": r.metrics.get("test_accuracy"),
        "change": None if base_acc is None else r.metrics.get("test_accuracy") - base_acc,
        "validation accuracy": r.metrics.get("val_accuracy"), "train accuracy": r.metrics.get("train_accuracy"),
        "run": r.run_id} for a, r in done]).sort_values("validation accuracy", ascending=False)  # fmt: skip
    shown = table.style.format({"change": fmt_signed})  # the real minus sign (a column format prints a hyphen)
    st.dataframe(shown, key=f"{P}_table", hide_index=True, width="stretch", column_config={
        "augmentation": st.column_config.TextColumn(width="large"),
        "test accuracy": st.column_config.NumberColumn("test", format="%.3f", help="Test accuracy"),
        "change": st.column_config.NumberColumn("test vs none",
                                                help="Change in test accuracy against the same run without augmentation"),
        "validation accuracy": st.column_config.NumberColumn("validation", format="%.3f"),
        "train accuracy": st.column_config.NumberColumn("train", format="%.3f"),
        "run": st.column_config.TextColumn()})  # fmt: skip
    effects = main_effects([(a, r.metrics["test_accuracy"]) for a, r in done])
    left, right = st.columns([3, 2])
    if effects and len(done) >= 4:
        left.altair_chart(effects_chart(effects), key=f"{P}_effects", width="stretch")
        right.caption(f"Average change in test accuracy when a factor is on, over {len(done)} runs (bars: 95% "
                      f"interval). Best test accuracy: {fmt_acc(table['test accuracy'].max())}; the table is sorted "
                      "by validation accuracy, which is what SceneLab chooses on.")  # fmt: skip
    else:
        left.caption("Each factor's average effect shows once four grid points are trained.")
