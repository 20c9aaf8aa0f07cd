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


def curves_chart(histories: Mapping[str, list[dict[str, float]]], width: int = 330, height: int = 230) -> alt.HConcatChart:
    """Train and validation loss (left) and accuracy (right) per epoch; several runs overlaid."""
    df = curves_frame(histories)
    several = df["run"].nunique() > 1
    panels = []
    for metric in ("loss", "accuracy"):
        part = df[df["metric"] == metric]
        enc: dict[str, Any] = {
            "x": alt.X("epoch:Q", title="epoch", axis=alt.Axis(tickMinStep=1)),
            "y": alt.Y("value:Q", title=metric, scale=alt.Scale(zero=False)),
            "strokeDash": alt.StrokeDash("split:N", title="split", sort=["train", "validation"]),
            "tooltip": ["run", "split", "epoch", alt.Tooltip("value:Q", format=".4f"), "phase", alt.Tooltip("lr:Q", format=".2g")],
        }
        enc["color"] = alt.Color("run:N", title="run") if several else alt.Color("split:N", title="split", sort=["train", "validation"])
        lines = alt.Chart(part).mark_line(point=alt.OverlayMarkDef(size=25)).encode(**enc)
        layers = [lines]
        boundary = part[part["phase"] == "whole network"].groupby("run")["epoch"].min().reset_index()
        if len(boundary):
            boundary["start"] = boundary["epoch"] - 0.5
            layers.append(
                alt.Chart(boundary).mark_rule(strokeDash=[2, 2], color="gray").encode(x="start:Q", tooltip=[alt.Tooltip("run"), alt.Tooltip("epoch", title="whole network from epoch")])
            )
        panels.append(alt.layer(*layers).properties(width=width, height=height, title=f"{metric} per epoch"))
    return alt.hconcat(*panels)


def confusion_chart(classes: list[str], confusion: list[list[int]], selection: Any | None = None) -> alt.LayerChart:
    """Heatmap of true (rows) against predicted (columns) class counts."""
    df = pd.DataFrame(
        [
            {"true": t, "predicted": p, "count": int(confusion[i][j]), "share": (confusion[i][j] / max(1, sum(confusion[i])))}
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
