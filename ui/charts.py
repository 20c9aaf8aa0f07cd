"""Altair charts shared by the pages: learning curves and the confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import altair as alt
import numpy as np
import pandas as pd


def curves_frame(histories: Mapping[str, list[dict[str, float]]]) -> pd.DataFrame:
    rows = []
    for run, history in histories.items():
        for row in history:
            for metric in ("loss", "accuracy"):
                for split, col in (("train", metric), ("validation", f"val_{metric}")):
                    value = row.get(col)
                    if value is not None and np.isfinite(value):
                        rows.append(
                            {
                                "run": run,
                                "epoch": int(row["epoch"]),
                                "metric": metric,
                                "split": split,
                                "value": float(value),
                                "phase": "whole network" if row.get("phase") == 1.0 else "head",
                                "lr": row.get("lr"),
                            }
                        )
    return pd.DataFrame(rows, columns=["run", "epoch", "metric", "split", "value", "phase", "lr"])


SPLIT_DASH = alt.Scale(domain=["train", "validation"], range=[[1, 0], [6, 4]])
SPLIT_COLOUR = alt.Scale(domain=["train", "validation"], range=["#1f77b4", "#ff7f0e"])
RUN_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def metric_chart(histories: Mapping[str, list[dict[str, float]]], metric: str, height: int = 200) -> alt.LayerChart:
    """One metric per epoch, every run on it (one y-axis): train solid, validation dashed.

    With one run colour shows the split; with several, colour shows the run (clearly different colours) and
    the dash the split; legends draw lines with their dash, not dots."""
    df = curves_frame(histories)
    part = df[df["metric"] == metric]
    several = df["run"].nunique() > 1
    stroke = alt.Legend(symbolType="stroke", symbolStrokeWidth=2, orient="bottom", direction="vertical", labelLimit=260)
    enc: dict[str, Any] = {
        "x": alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1, format="d")),
        "y": alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
        "strokeDash": alt.StrokeDash("split:N", title="split", scale=SPLIT_DASH, legend=stroke if several else None),
        "tooltip": [
            "run",
            "split",
            "epoch",
            alt.Tooltip("value:Q", format=".3f"),
            "phase",
            alt.Tooltip("lr:Q", format=".2g"),
        ],
        "detail": "run:N",
    }
    if several:
        enc["color"] = alt.Color("run:N", title="run", scale=alt.Scale(range=RUN_COLOURS), legend=stroke)
    else:
        enc["color"] = alt.Color("split:N", title="split", scale=SPLIT_COLOUR, legend=stroke)
    layers = [alt.Chart(part).mark_line(strokeWidth=2).encode(**enc)]
    boundary = part[part["phase"] == "whole network"].groupby("run")["epoch"].min().reset_index()
    if len(boundary):
        boundary["start"] = boundary["epoch"] - 0.5
        layers.append(
            alt.Chart(boundary)
            .mark_rule(strokeDash=[2, 2], color="gray")
            .encode(x="start:Q", tooltip=[alt.Tooltip("run"), alt.Tooltip("epoch", title="whole network from epoch")])
        )
    # Streamlit fits the whole chart (title, axes, the legend under it) into its height: make room for the
    # legend's rows so the plot keeps ``height`` pixels whatever the number of runs
    legend_rows = (2 + 1) + ((df["run"].nunique() + 1) if several else 0)
    return alt.layer(*layers).properties(height=height + 80 + 18 * legend_rows, title=f"{metric} per epoch")


def draw_curves(histories: Mapping[str, list[dict[str, float]]], key: str, height: int = 200) -> None:
    """Loss and accuracy side by side, each as wide as its column (never wider than the page)."""
    import streamlit as st

    left, right = st.columns(2)
    left.altair_chart(metric_chart(histories, "loss", height), key=f"{key}_loss", width="stretch")
    right.altair_chart(metric_chart(histories, "accuracy", height), key=f"{key}_accuracy", width="stretch")


def confusion_chart(classes: list[str], confusion: list[list[int]], selection: Any | None = None) -> alt.LayerChart:
    """Heatmap of true (rows) against predicted (columns) class counts."""
    df = pd.DataFrame(
        [
            {
                "true": t,
                "predicted": p,
                "count": int(confusion[i][j]),
                "share": (confusion[i][j] / max(1, sum(confusion[i]))),
            }
            for i, t in enumerate(classes)
            for j, p in enumerate(classes)
        ]
    )
    base = alt.Chart(df).encode(
        x=alt.X("predicted:N", sort=classes, title="predicted class"),
        y=alt.Y("true:N", sort=classes, title="true class"),
    )
    rect = base.mark_rect().encode(
        color=alt.Color("share:Q", title="share of true class", scale=alt.Scale(scheme="blues", domain=[0, 1])),
        tooltip=["true", "predicted", "count", alt.Tooltip("share:Q", format=".0%")],
    )
    if selection is not None:
        rect = rect.add_params(selection).encode(
            opacity=alt.condition(selection, alt.value(1.0), alt.value(0.55)),
        )
    text = base.mark_text(fontSize=12).encode(
        text="count:Q",
        color=alt.condition("datum.share > 0.5", alt.value("white"), alt.value("black")),
    )
    size = max(260, 42 * len(classes))
    return alt.layer(rect, text).properties(width=size, height=size)


STUDY_COLOUR, OURS_COLOUR = "#e45756", "#1f77b4"  # the study's series as strong as ours: both must be read


def truncation_chart(df: pd.DataFrame, height: int = 380) -> alt.LayerChart:
    """Backbone parameters (log) against test accuracy, the y-axis zoomed to the points; each point labelled
    with its blocks removed, in its series' colour; ours and the study's as two labelled series."""
    lo = float(df["test accuracy"].min()) if len(df) else 0.0
    hi = float(df["test accuracy"].max()) if len(df) else 1.0
    pad = max(0.02, (hi - lo) * 0.15)
    who = sorted(df["who"].unique(), key=lambda w: w.startswith("the study")) if len(df) else []
    colours = [STUDY_COLOUR if w.startswith("the study") else OURS_COLOUR for w in who]
    base = alt.Chart(df).encode(
        x=alt.X("parameters:Q", scale=alt.Scale(type="log"), title="backbone parameters (log scale)"),
        y=alt.Y("test accuracy:Q", scale=alt.Scale(domain=[max(0.0, lo - pad), min(1.0, hi + pad)]),
                title="test accuracy"),
        color=alt.Color("who:N", title=None, scale=alt.Scale(domain=who, range=colours),
                        legend=alt.Legend(orient="bottom", labelLimit=400, labelFontSize=12, symbolSize=120)),
    )  # fmt: skip
    lines = base.mark_line(strokeWidth=2).encode(detail="who:N", order="blocks removed:Q")
    points = base.mark_point(filled=True, size=110, opacity=1).encode(
        shape=alt.Shape("who:N", legend=None),
        tooltip=["who", "blocks removed", alt.Tooltip("parameters:Q", format=","),
                 alt.Tooltip("test accuracy:Q", format=".3f"), "run"],
    )  # fmt: skip
    labels = base.mark_text(dy=-14, fontSize=13, fontWeight="bold").encode(text=alt.Text("blocks removed:N"))
    return alt.layer(lines, points, labels).properties(height=height, title="numbers: blocks removed")


def sweep_chart(df: pd.DataFrame, study: dict, height: int = 300) -> alt.LayerChart:
    """Test accuracy against training images per class ("all" last), with the study's point as a diamond; a legend
    names both."""
    order = [str(v) for v in df["images per class"]]
    ours_label, study_label = "ours", f"the study ({study['per_class']} per class)"
    df = df.assign(**{"images per class": [str(v) for v in df["images per class"]], "who": ours_label})
    x = alt.X("images per class:N", sort=order, title="training images per class", axis=alt.Axis(labelAngle=0))
    y = alt.Y("test accuracy:Q", scale=alt.Scale(zero=False), title="test accuracy")
    colour = alt.Color("who:N", title=None, scale=alt.Scale(domain=[ours_label, study_label], range=[OURS_COLOUR, STUDY_COLOUR]),
                       legend=alt.Legend(orient="bottom", symbolSize=120))  # fmt: skip
    shape = alt.Shape(
        "who:N", scale=alt.Scale(domain=[ours_label, study_label], range=["circle", "diamond"]), legend=None
    )
    ours = (
        alt.Chart(df)
        .mark_line(point=True)
        .encode(
            x=x,
            y=y,
            color=colour,
            tooltip=["images per class", alt.Tooltip("test accuracy:Q", format=".3f"), "n_train"],
        )
    )
    star = pd.DataFrame(
        [{"images per class": str(study["per_class"]), "test accuracy": study["accuracy"], "who": study_label}]
    )
    mark = (
        alt.Chart(star)
        .mark_point(size=180, filled=True, opacity=1)
        .encode(
            x=x,
            y=y,
            color=colour,
            shape=shape,
            tooltip=[alt.Tooltip("test accuracy:Q", title="the study", format=".3f")],
        )
    )
    return alt.layer(ours, mark).properties(height=height)


def effects_chart(effects: list, height: int | None = None) -> alt.LayerChart:
    """Each augmentation factor's main effect on test accuracy, with its 95% interval (28 px a factor besides
    the title and axis that Streamlit counts in the height, so every factor keeps its label)."""
    from core.config import AUGMENT_SETTINGS

    df = pd.DataFrame([{"factor": AUGMENT_SETTINGS[e.factor].label, "effect": e.effect, "lo": e.effect - e.spread,
                        "hi": e.effect + e.spread, "runs": f"{e.n_on} on / {e.n_off} off"} for e in effects])  # fmt: skip
    y = alt.Y("factor:N", sort=list(df["factor"]), title=None, axis=alt.Axis(labelOverlap=False, labelLimit=160))
    bars = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("effect:Q", title="change in test accuracy when on"),
            y=y,
            color=alt.condition("datum.effect > 0", alt.value("#2ca02c"), alt.value("#d62728")),
            tooltip=["factor", alt.Tooltip("effect:Q", format="+.3f"), "runs"],
        )
    )
    rules = alt.Chart(df).mark_rule(color="black").encode(x="lo:Q", x2="hi:Q", y=y)
    return alt.layer(bars, rules).properties(height=height or 70 + 28 * len(df), title="main effects")


def chain_chart(df: pd.DataFrame, steps: list[str], height: int = 260) -> alt.LayerChart:
    """Test accuracy step by step (ours beside the study's): bars from 0, so their lengths compare, each with its
    figure on top."""
    x = alt.X("step:N", sort=steps, title=None, axis=alt.Axis(labelAngle=0, labelLimit=200))
    y = alt.Y("test accuracy:Q", scale=alt.Scale(domain=[0.0, 1.0], zero=True), title="test accuracy")
    base = alt.Chart(df).encode(x=x, xOffset=alt.XOffset("who:N", sort=["ours", "the study"]), y=y)
    bars = base.mark_bar().encode(
        color=alt.Color("who:N", title=None, scale=alt.Scale(domain=["ours", "the study"], range=["#1f77b4", "#9e9e9e"]),
                        legend=alt.Legend(orient="bottom")),
        tooltip=["step", "who", alt.Tooltip("test accuracy:Q", format=".3f")],
    )  # fmt: skip
    text = base.mark_text(dy=-6, fontSize=11).encode(text=alt.Text("test accuracy:Q", format=".3f"))
    return alt.layer(bars, text).properties(height=height)
