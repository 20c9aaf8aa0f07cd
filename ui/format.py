"""Words and numbers for the pages: formatted figures and seconds, a run's context line, its settings in short."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.config import RunConfig
from core.runs import summary_row
from core.store import RunRecord
from ui.settings import CONFIG_SHARED_KEYS


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    return pd.DataFrame([summary_row(r) for r in records])


def result_line(record: RunRecord) -> str:
    cfg = record.config.get("run", {})
    ds = record.config.get("dataset", {}).get("name", "?")
    weights = cfg.get("weights", "?")
    return (
        f"dataset **{ds}** · {cfg.get('backbone', '?')} ({weights} weights) · "
        f"{cfg.get('image_size', '?')} px{' · test-time flip' if cfg.get('tta') else ''} · run `{record.run_id}`"
    )


def result_caption(record: RunRecord) -> None:
    """One line naming the dataset, backbone, image size and run id of the numbers next to it."""
    m = record.metrics
    extra = []
    if m.get("seconds") is not None:
        extra.append(f"trained in {fmt_seconds(m['seconds'])}")
    if record.config.get("created"):
        extra.append(str(record.config["created"])[:16].replace("T", " "))
    st.caption(result_line(record) + ("".join(f" · {e}" for e in extra)))


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "?"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:02.0f} min"


def fmt_eta(seconds: float) -> str:
    """A rounded time left: seconds under a minute, then minutes, then hours and minutes."""
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600:.0f} h {round(seconds % 3600 / 60):02d} min"


def fmt_acc(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def summarise_config(cfg: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> str:
    """The settings of a run that differ from ``defaults`` (RunConfig's), as short text."""
    base = defaults if defaults is not None else RunConfig().to_dict()
    parts = []
    for k, v in cfg.items():
        if k in CONFIG_SHARED_KEYS:
            continue
        if k == "augment":
            aug = augment_label(v or {})
            if aug != "none":
                parts.append(f"augment: {aug}")
        elif base.get(k) != v:
            parts.append(f"{k}={v}")
    return ", ".join(parts) or "defaults"


def job_label(cfg: RunConfig) -> str:
    """Phase and epochs, then whatever else differs from the defaults."""
    epochs = f"{cfg.epochs}+{cfg.resolved_full_epochs} epochs" if cfg.phase == "head+full" else f"{cfg.epochs} epochs"
    rest = summarise_config({k: v for k, v in cfg.to_dict().items() if k not in ("phase", "epochs", "full_epochs")})
    return f"{cfg.phase}, {epochs}" + ("" if rest == "defaults" else f", {rest}")


def augment_label(aug: Mapping[str, Any]) -> str:
    names = {
        "hflip": "h-flip",
        "vflip": "v-flip",
        "grid_mask": "GridMask",
        "channel_shuffle": "channel shuffle",
    }
    parts = []
    for k in ("rotation", "width_shift", "height_shift", "shear", "zoom"):
        if aug.get(k):
            parts.append(f"{k.replace('_', ' ')} {aug[k]:g}")
    for k, label in names.items():
        if aug.get(k):
            parts.append(label)
    return " + ".join(parts) or "none"
