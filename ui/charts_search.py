"""The search page's charts: optimisation history, learning curves, parallel coordinates, importances, slices."""

from __future__ import annotations

import json
import math
from typing import Any

import altair as alt
import pandas as pd

from core.search.summaries import param_label

STATE_COLOURS = alt.Scale(
    domain=["COMPLETE", "PRUNED", "RUNNING", "FAIL"], range=["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
)
#: trial numbers are whole: ticks on whole numbers only, never 0.5
TRIAL_AXIS = alt.Axis(tickMinStep=1, format="d")


def history_chart(df: pd.DataFrame) -> alt.LayerChart:
    done = df[df["state"] == "COMPLETE"].sort_values("number").copy()
    done["best so far"] = done["value"].cummax()
    points = (
        alt.Chart(done)
        .mark_circle(size=60)
        .encode(
            x=alt.X("number:Q", title="trial", axis=TRIAL_AXIS),
            y=alt.Y("value:Q", title="validation accuracy", scale=alt.Scale(zero=False)),
            color=alt.Color("test_accuracy:Q", title="test accuracy", scale=alt.Scale(scheme="viridis")),
            tooltip=[
                alt.Tooltip("number:Q", title="trial"),
                alt.Tooltip("value:Q", title="val accuracy", format=".3f"),
                alt.Tooltip("test_accuracy:Q", title="test accuracy", format=".3f"),
                *([alt.Tooltip("optimizer:N", title=param_label("optimizer"))] if "optimizer" in done else []),
            ],
        )
    )
    best = (
        alt.Chart(done)
        .mark_line(interpolate="step-after", color="black")
        .encode(x=alt.X("number:Q", axis=TRIAL_AXIS), y="best so far:Q", tooltip=[alt.Tooltip("best so far:Q", format=".3f")])
    )
    return alt.layer(points, best).properties(height=280, title="Optimisation history (line: best so far)")


def curves_chart(inter: pd.DataFrame) -> alt.Chart:
    return (
        alt.Chart(inter)
        .mark_line(point=alt.OverlayMarkDef(size=12), opacity=0.75)
        .encode(
            x=alt.X("step:Q", title="epoch", axis=alt.Axis(tickMinStep=1)),
            y=alt.Y("value:Q", title="validation accuracy", scale=alt.Scale(zero=False)),
            color=alt.Color("state:N", scale=STATE_COLOURS, title="trial state"),
            strokeDash=alt.condition("datum.state == 'PRUNED'", alt.value([4, 3]), alt.value([1, 0])),
            detail="trial:N",
            tooltip=["trial", "state", alt.Tooltip("step:Q", title="epoch"), alt.Tooltip("value:Q", title="val accuracy", format=".3f")],
        )
        .properties(height=280, title="Learning curves (dashed: pruned trials)")
    )


def normalise(value: Any, spec: dict[str, Any] | None, seen: list[Any]) -> float | None:
    """A parameter value on [0, 1]: by the space's bounds (log-scaled when the space is), or its choice index."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if spec and spec.get("type") == "categorical":
        choices = [json.dumps(c) for c in spec["choices"]]
        key = json.dumps(value)
        return choices.index(key) / max(1, len(choices) - 1) if key in choices else None
    if spec and spec.get("type") in ("float", "int"):
        lo, hi = float(spec["low"]), float(spec["high"])
        v = float(value)
        if spec.get("log"):
            lo, hi, v = math.log10(lo), math.log10(hi), math.log10(max(v, 1e-300))
        return (v - lo) / (hi - lo) if hi > lo else 0.5
    # no spec (a foreign study): by the values seen
    nums = [float(x) for x in seen if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if isinstance(value, (int, float)) and not isinstance(value, bool) and nums:
        lo, hi = min(nums), max(nums)
        return (float(value) - lo) / (hi - lo) if hi > lo else 0.5
    labels = sorted({json.dumps(x) for x in seen})
    return labels.index(json.dumps(value)) / max(1, len(labels) - 1)


def parallel_chart(df: pd.DataFrame, params: list[str], space: dict[str, Any]) -> alt.Chart | None:
    done = df[df["state"] == "COMPLETE"]
    if done.empty or not params:
        return None
    rows = []
    for _, t in done.iterrows():
        for p in params:
            pos = normalise(t[p], space.get(p), list(done[p]))
            if pos is not None:
                rows.append({"trial": int(t["number"]), "axis": param_label(p), "position": pos, "setting": str(t[p]), "value": t["value"]})
        rows.append({"trial": int(t["number"]), "axis": "validation accuracy", "position": None, "setting": f"{t['value']:.3f}", "value": t["value"]})
    long = pd.DataFrame(rows)
    vmin, vmax = float(done["value"].min()), float(done["value"].max())
    long.loc[long["axis"] == "validation accuracy", "position"] = (
        (long["value"] - vmin) / (vmax - vmin) if vmax > vmin else 0.5
    )
    order = [*(param_label(p) for p in params), "validation accuracy"]
    base = alt.Chart(long).encode(
        x=alt.X("axis:N", sort=order, title=None, axis=alt.Axis(labelAngle=-20, labelOverlap=False)),
        y=alt.Y("position:Q", title="position in the search range", scale=alt.Scale(domain=[0, 1])),
    )
    lines = base.mark_line(opacity=0.6).encode(
        color=alt.Color("value:Q", title="validation accuracy", scale=alt.Scale(scheme="viridis")),
        detail="trial:N",
        tooltip=["trial", "axis", "setting", alt.Tooltip("value:Q", title="val accuracy", format=".3f")],
    )
    ticks = alt.Chart(pd.DataFrame({"axis": order})).mark_rule(color="#bbb").encode(x=alt.X("axis:N", sort=order))
    return alt.layer(ticks, lines).properties(height=300, title="Parallel coordinates (each parameter scaled to its range; one line per trial)")


def importance_chart(imp: dict[str, float]) -> alt.Chart:
    df = pd.DataFrame({"parameter": [param_label(p) for p in imp], "importance": list(imp.values())})
    return (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("importance:Q", title="importance (fANOVA, share of variance)"),
            y=alt.Y("parameter:N", sort="-x", title=None, axis=alt.Axis(labelOverlap=False)),
            tooltip=["parameter", alt.Tooltip("importance:Q", format=".3f")],
        )
        .properties(height=32 * max(3, len(df)) + 20)  # the page titles it, with what it is drawn from
    )


def slice_chart(df: pd.DataFrame, param: str, spec: dict[str, Any] | None) -> alt.Chart:
    done = df[(df["state"] == "COMPLETE") & df[param].notna()][["number", param, "value"]].copy()
    numeric = spec is not None and spec.get("type") in ("float", "int")
    if numeric:
        log = bool(spec.get("log"))
        x = alt.X(
            f"{param}:Q",
            title=param_label(param),
            scale=alt.Scale(type="log" if log else "linear"),
            axis=alt.Axis(tickCount=4, grid=not log, format="~e" if log else "~g"),
        )
    else:
        done[param] = done[param].astype(str)
        order = [str(c) for c in spec["choices"]] if spec and spec.get("choices") else None
        x = alt.X(f"{param}:N", title=param_label(param), sort=order, axis=alt.Axis(labelAngle=-30, labelOverlap=False))
    return (
        alt.Chart(done)
        .mark_circle(size=50, opacity=0.8)
        .encode(
            x=x,
            y=alt.Y("value:Q", title="val accuracy", scale=alt.Scale(zero=False)),
            color=alt.Color("number:Q", title="trial", scale=alt.Scale(scheme="blues"), legend=alt.Legend(format="d", tickMinStep=1)),
            tooltip=[alt.Tooltip("number:Q", title="trial"), alt.Tooltip(f"{param}:{'Q' if numeric else 'N'}", title=param_label(param)),
                     alt.Tooltip("value:Q", title="val accuracy", format=".3f")],
        )
        .properties(width=190, height=170, title=param_label(param))
    )
