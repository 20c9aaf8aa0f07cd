"""A self-contained report of a reproduction: Markdown with its charts as SVG and PNG, no browser, no network.

``write_report(folder, rows, context)`` writes ``report.md`` (the table: the study's figure beside ours,
every run id, dataset, backbone and image size), ``accuracy.svg`` and ``accuracy.png`` (rendered by
vl-convert from a Vega-Lite chart), and ``rows.json``. Written to a temporary folder and renamed, so a
report is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from core.errors import StoreError, os_error_phrase
from core.study import reference as ref


def _chart(rows: list[dict[str, Any]]) -> dict[str, Any]:
    import altair as alt
    import pandas as pd

    data = []
    for r in rows:
        label = f"{r['task']} · {r['setting']}"[:60]
        if r.get("ours") is not None:
            data.append({"row": label, "who": "ours (test)", "accuracy": r["ours"]})
        if r.get("study") is not None:
            data.append({"row": label, "who": "the study", "accuracy": r["study"]})
    chart = (
        alt.Chart(pd.DataFrame(data or [{"row": "-", "who": "ours (test)", "accuracy": 0.0}]))
        .mark_bar()
        .encode(
            y=alt.Y("row:N", sort=None, title=None, axis=alt.Axis(labelLimit=420)),
            yOffset="who:N",
            x=alt.X("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="accuracy"),
            color=alt.Color("who:N", title=None, scale=alt.Scale(domain=["ours (test)", "the study"], range=["#1f77b4", "#bbbbbb"])),
        )
        .properties(width=520, title="The study's figures beside ours")
    )
    return json.loads(chart.to_json())


_MODE_WORDS = {"quick": "heads on the frozen backbone; task 0 fine-tunes for 2 epochs",
               "faithful": "every row fine-tuned as the study did: the head, then the last blocks"}


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def _secs(value: Any) -> str:
    return "–" if value is None else f"{value:.1f}"


def _interval(r: dict[str, Any]) -> str:
    if r.get("low") is None or r.get("high") is None:
        return "–"
    return f"{r['low']:.3f} to {r['high']:.3f}" + (f" ({r['n']} seeds)" if (r.get("n") or 0) > 1 else "")


def _claim_lines(claims: list[dict[str, Any]] | None) -> list[str]:
    if not claims:
        return []
    out = ["", "## The study's conclusions, here", ""]
    for c in claims:
        if c.get("diff") is None:
            out.append(f"- {c['claim']}: **{c['verdict']}**.")
        else:
            out.append(f"- {c['claim']}: **{c['verdict']}** ({c['measure']} {c['diff']:+.3f}, 95% interval "
                       f"{c['low']:+.3f} to {c['high']:+.3f}).")  # fmt: skip
    return out


def markdown(rows: list[dict[str, Any]], context: dict[str, Any], seconds: float | None, trained: int | None = None,
             claims: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
    lines = [
        "# The study, reproduced with SceneLab",
        "",
        f"Dataset **{context['dataset']}** · backbone **{context['backbone']}** ({context['weights']} weights) · "
        f"**{context['image_size']} px** · seed {context['seed']}{' · test-time flip' if context.get('tta') else ''}. "
        f"The study: {ref.STUDY_MODEL}; its figures were selected on its test folder, ours on a validation split "
        "carved from the training folder (test accuracy is reported).",
        "",
        "![accuracy](accuracy.svg)",
        "",
        f"Mode **{context.get('mode', 'quick')}** ({_MODE_WORDS.get(context.get('mode', 'quick'), '')}), "
        f"{context.get('repeats', 1)} seed(s) per row; the interval is 95%, from the seeds and the test set's size.",
        "",
        "| task | setting | the study | ours (test) | 95% interval | ours (validation) | run | seconds | stored |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['task']} | {r['setting']} | {_fmt(r.get('study'))} | {_fmt(r.get('ours'))} | {_interval(r)} | "
                     f"{_fmt(r.get('val'))} | `{r.get('run_id') or '–'}` | {_secs(r.get('seconds'))} | "
                     f"{'yes' if r.get('cached') else 'no'} |")  # fmt: skip
    lines += _claim_lines(claims)
    each = {r["run_id"]: r["seconds"] for r in rows if r.get("run_id") and r.get("seconds") is not None}
    done = f"; this call trained {trained} run(s)" if trained is not None else "; this call took"
    lines += ["", f"Written {time.strftime('%Y-%m-%d %H:%M')}. The runs above trained in {sum(each.values()):.0f} s in all "
              f"(each run once, the search's trials added up){done} in {seconds or 0:.0f} s."]
    return "\n".join(lines) + "\n"


def write_report(folder: str | os.PathLike[str], rows: list[dict[str, Any]], context: dict[str, Any],
                 seconds: float | None = None, trained: int | None = None,
                 claims: list[dict[str, Any]] | None = None) -> Path:  # fmt: skip
    """Write the report into ``folder`` (replacing an earlier one); its path."""
    import vl_convert as vlc

    dest = Path(folder).expanduser().resolve()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        spec = _chart(rows)
        (tmp / "accuracy.svg").write_text(vlc.vegalite_to_svg(spec))
        (tmp / "accuracy.png").write_bytes(vlc.vegalite_to_png(spec, scale=2))
        (tmp / "report.md").write_text(markdown(rows, context, seconds, trained, claims))
        (tmp / "rows.json").write_text(json.dumps({"context": context, "rows": rows, "claims": claims or [],
                                                   "seconds": seconds}, indent=2))  # fmt: skip
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except OSError as exc:
        raise StoreError(f"The report could not be written to {dest} because {os_error_phrase(exc)}; choose another "
                         "folder with --report.") from exc  # fmt: skip
    return dest
