"""The downloads of one run: its classifier as ``.keras`` and ``.tflite``, and their labels and model cards.

Each file is written by :func:`core.training.runs.export_model` on the first click (a few seconds for ``.keras``,
ten or more for ``.tflite``: the TFLite converter), then kept in the system's temporary folder under the
run id and its training time (a run retrained with ``--force`` gets new files), so later clicks, reruns
and other sessions download at once.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import streamlit as st

from core.errors import SceneLabError, first_line
from core.store.folders import RunRecord
from core.training.export import LABELS_FILE
from core.training.runs import export_model

EXPORT_DIR = Path(tempfile.gettempdir()) / "scenelab-exports"
FORMATS = {
    "keras": "Raw 0-255 RGB pixels in, class probabilities out; keras.models.load_model(path, safe_mode=True).",
    "tflite": "Raw 0-255 RGB pixels in, class probabilities out; runs in the LiteRT (TFLite) interpreter, "
              "on a phone or in Python without TensorFlow (pip install ai-edge-litert).",
}
KEY = "downloads"


def export_file(record: RunRecord, fmt: str) -> Path:
    """Where the run's ``fmt`` export is kept: one folder per format (each has its own card and labels)."""
    stamp = hashlib.sha256(str(record.config.get("created", "")).encode()).hexdigest()[:8]
    return EXPORT_DIR / f"{record.run_id}-{stamp}" / fmt / f"scenelab-{record.run_id}.{fmt}"


def prepare(record: RunRecord, fmt: str) -> str | None:
    """Write the run's ``fmt`` export unless it is there; ``None``, or the sentence that says why not."""
    path = export_file(record, fmt)
    if path.is_file():
        return None
    try:
        export_model(record, path)
    except SceneLabError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - one sentence on the page, never a traceback
        return f"The model of run {record.run_id} could not be exported as .{fmt} ({type(exc).__name__}: {first_line(exc)})."
    return None


def cards_zip(record: RunRecord) -> bytes:
    """``labels.txt`` and the model card of each format prepared so far, in one small zip."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for fmt in FORMATS:
            path = export_file(record, fmt)
            if path.is_file():
                zf.write(path.parent / LABELS_FILE, LABELS_FILE)
                zf.write(path.with_suffix(".json"), f"model-card-{fmt}.json")
    return buf.getvalue()


def export_buttons(record: RunRecord, container: Any) -> None:
    """"Download .keras" and "Download .tflite" for ``record`` in ``container`` (prepared on the first click,
    with a spinner), then "Labels and model card" once one is prepared; a failure is one sentence."""
    prepared = False
    for fmt, help_text in FORMATS.items():
        path = export_file(record, fmt)
        if path.is_file():
            prepared = True
            container.download_button(
                f"Download .{fmt} ({path.stat().st_size / 1e6:.1f} MB)", data=path.read_bytes, file_name=path.name,
                mime="application/octet-stream", key=f"{KEY}_{fmt}_{record.run_id}", icon=":material/download:",
                help=help_text, on_click="ignore",
            )
        elif container.button(f"Download .{fmt}", key=f"{KEY}_prepare_{fmt}_{record.run_id}", icon=":material/build:",
                              help=f"Writes the file first (a few seconds). {help_text}"):
            with container, st.spinner(f"Writing the .{fmt} file…"):
                error = prepare(record, fmt)
            if error:
                container.error(error)
            else:
                st.rerun()
    if prepared:
        container.download_button(
            "Labels and model card (.zip)", data=lambda: cards_zip(record), file_name=f"scenelab-{record.run_id}-card.zip",
            mime="application/zip", key=f"{KEY}_card_{record.run_id}", icon=":material/download:", on_click="ignore",
            help="labels.txt (one class per line, in output order) and the JSON model card of each prepared format.",
        )
