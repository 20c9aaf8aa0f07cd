"""Words and numbers for the pages: one format for every figure, and a readable name for every run.

Accuracies have 3 decimals everywhere; a setting is called by its label (``core.config``'s metadata) on
every page; a run is named after its page and what differs from the defaults ("4 · dropout 0.5, 50/class").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.config import AUGMENT_SETTINGS, RUN_SETTINGS, RunConfig
from core.store.folders import RunRecord
from core.training.runs import summary_row
from ui.catalog import BY_KEY, page_of_run
from ui.settings import CONFIG_SHARED_KEYS

_DEFAULTS = RunConfig().to_dict()
PHASE_LABELS = {
    "head+full": "Head, then the whole network (the study)",
    "head": "Head only (backbone frozen)",
    "full": "Whole network from the start",
}
# settings whose default every run shows anyway, or that a name leaves to the context line
_UNNAMED = set(CONFIG_SHARED_KEYS) | {"val_fraction", "freeze_blocks"}


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


def fmt_signed(value: float | None, digits: int = 3) -> str:
    """A change with its sign, the negative one with a real minus sign (−0.013, +0.020)."""
    return "–" if value is None else f"{value:+.{digits}f}".replace("-", "\u2212")


def fmt_value(name: str, value: Any) -> str:
    """A setting's value as a person writes it (learning rates in scientific notation)."""
    info = RUN_SETTINGS.get(name) or AUGMENT_SETTINGS.get(name)
    if value is None:
        return info.none_label if info is not None else "–"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.1e}" if info is not None and info.log and value < 0.01 else f"{value:.3g}"
    return str(value)


def lowered(label: str) -> str:
    """A setting's label inside a phrase: its first letter lower case, acronyms and names kept ("reduce-LR
    patience", "GridMask", "Dense(1024) layer")."""
    if label.startswith(("GridMask", "Dense(")):
        return label
    return label[:1].lower() + label[1:]


def augment_label(aug: Mapping[str, Any]) -> str:
    """The augmentations that are on, e.g. ``horizontal flip + zoom 0.2``; ``none``."""
    parts = []
    for name, info in AUGMENT_SETTINGS.items():
        value = aug.get(name)
        if value:
            parts.append(lowered(info.label) if isinstance(value, bool) else f"{lowered(info.label)} {value:g}")
    return " + ".join(parts) or "none"


def setting_phrases(run: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> list[str]:
    """What differs from ``defaults`` (RunConfig's), each as a short phrase in the settings' own words."""
    base = defaults if defaults is not None else _DEFAULTS
    parts = []
    order = ["phase", *(n for n in RUN_SETTINGS if n != "phase"), "augment"]
    for name in order:
        if name not in run:
            continue
        value = run[name]
        if name in _UNNAMED or (base.get(name) == value and name != "phase"):
            continue
        if name == "augment":
            parts.append(augment_label(value or {}))
        elif name == "train_per_class":
            parts.append(f"{value}/class")
        elif name == "phase":
            parts.append({"head": "head only", "full": "whole network", "head+full": "head, then whole network"}[value])
        elif name in RUN_SETTINGS:
            info = RUN_SETTINGS[name]
            parts.append(lowered(info.label) if value is True else f"{lowered(info.label)} {fmt_value(name, value)}")
    return parts


def run_name(run: Mapping[str, Any], search: bool = False, page: str | None = None) -> str:
    """``<page number> · <what differs from the defaults>``, e.g. ``4 · dropout 0.5, 50/class``; a search
    trial's run (``search``) is numbered 5; ``page`` (a page key) names the run as that page shows it (page 1's
    uncut run: ``1 · head only, no blocks removed``)."""
    phrases = setting_phrases(run)
    if page == "truncate" and not run.get("remove_blocks"):
        phrases.append("no blocks removed")
    elif page == "small_data" and run.get("train_per_class") is None:
        phrases.append("full training set")
    shown = BY_KEY[page] if page in BY_KEY else page_of_run(run)
    prefix = "5" if search else (shown.number or shown.title)
    return f"{prefix} · {', '.join(phrases) or 'defaults'}"


def backbone_label(name: Any) -> str:
    """A backbone's display name from the registry ("EfficientNet-Lite0"), the name itself when unknown."""
    from core.models.backbones import BACKBONES

    return BACKBONES[name].label if name in BACKBONES else str(name)


def summarise_config(run: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> str:
    """The settings of a run that differ from ``defaults``, as short text ("defaults" when none)."""
    return ", ".join(setting_phrases(run, defaults)) or "defaults"


def job_label(cfg: RunConfig) -> str:
    return run_name(cfg.to_dict())


def shown_path(path: str | os.PathLike[str]) -> str:
    """A server path as students may see it: the folder's name only, unless this is the owner's app."""
    from ui.settings import is_admin

    return str(path) if is_admin() else os.path.basename(os.path.normpath(str(path)))


def context_line(record: RunRecord, page: str | None = None) -> str:
    """Dataset, backbone, weights, image size, test-time flip, run name and id: what a figure belongs to."""
    run = record.config.get("run", {})
    ds = record.config.get("dataset", {}).get("name", "?")
    flip = " · test-time flip" if run.get("tta") else ""
    name = run_name(run, search=bool(record.config.get("search_study")), page=page)
    return (
        f"**{name}** · dataset {ds} · {backbone_label(run.get('backbone', '?'))} ({run.get('weights', '?')} weights) · "
        f"{run.get('image_size', '?')} px{flip} · run `{record.run_id}`"
    )


def result_line(record: RunRecord) -> str:
    return context_line(record)


def result_caption(record: RunRecord, page: str | None = None) -> None:
    """One line naming the run, dataset, backbone, image size and run id of the numbers next to it."""
    m = record.metrics
    extra = []
    if m.get("seconds") is not None:
        extra.append(f"trained in {fmt_seconds(m['seconds'])}")
    if record.config.get("trained_by"):
        extra.append(f"by {record.config['trained_by']}")
    if record.config.get("created"):
        extra.append(fmt_time(record.config["created"]))
    st.caption(context_line(record, page) + "".join(f" · {e}" for e in extra))


def fmt_time(stamp: Any) -> str:
    """A stored time ("2026-12-02T07:41:58+0000") in the browser's time zone (else the server's), readable:
    "2 Dec 2026, 08:41"; "" if none."""
    import datetime as dt
    import zoneinfo

    if not stamp:
        return ""
    try:
        when = dt.datetime.fromisoformat(str(stamp))
    except ValueError:
        return str(stamp)
    if when.tzinfo is not None:
        zone = None
        with contextlib.suppress(Exception):  # no browser (a test), or a zone this Python does not know
            zone = zoneinfo.ZoneInfo(str(st.context.timezone))
        when = when.astimezone(zone)
    return f"{when.day} {when:%b %Y, %H:%M}"


def runs_table(records: list[RunRecord]) -> pd.DataFrame:
    rows = []
    for r in records:
        row = summary_row(r)
        run = r.config.get("run", {})
        row["name"] = run_name(run, search=bool(r.config.get("search_study")))
        row["page"] = "5 Hyperparameter search" if r.config.get("search_study") else page_of_run(run).label
        if r.members:  # an ensemble record (python -m core best): named by its size and its first run
            row["name"] = f"Best model, mean of {len(r.members)} runs: {row['name']}"
            row["page"] = "Study (best model)"
        row["trained_by"] = r.config.get("trained_by") or "–"
        row["backbone"] = backbone_label(row.get("backbone"))
        row["trained"] = fmt_time(row.get("created"))
        rows.append(row)
    return pd.DataFrame(rows)
