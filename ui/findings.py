"""One sentence per task page saying what its stored runs found, computed from them (page 2 does it inline).

The best setting is chosen by validation accuracy, as everywhere in SceneLab (the study chose on test); its
test accuracy is the figure given, against the page's reference run (no augmentation; augmentation alone).
"""

from __future__ import annotations

from collections.abc import Sequence

from core.store.folders import RunRecord
from ui.format import fmt_acc


def _acc(record: RunRecord, name: str) -> float:
    value = record.metrics.get(name)
    return float(value) if value is not None else float("-inf")


def best_by_validation(named: Sequence[tuple[str, RunRecord]]) -> tuple[str, RunRecord] | None:
    """The (label, run) with the best validation accuracy (ties: the better test accuracy), None if empty."""
    if not named:
        return None
    return max(named, key=lambda item: (_acc(item[1], "val_accuracy"), _acc(item[1], "test_accuracy")))


def finding(what: str, named: Sequence[tuple[str, RunRecord]], reference: tuple[str, RunRecord | None],
            missing: str) -> str:  # fmt: skip
    """ "On this data the best <what> is <label> (test 0.890, chosen by validation accuracy), 0.010 above <reference>
    (0.880)." or ``missing`` (what to train) when either side is not stored."""
    best = best_by_validation(named)
    ref_label, ref = reference
    if best is None or ref is None:
        return missing
    label, run = best
    test, base = run.metrics.get("test_accuracy"), ref.metrics.get("test_accuracy")
    if test is None or base is None:
        return missing
    diff = round(float(test) - float(base), 3)
    side = "equal to" if diff == 0 else f"{abs(diff):.3f} {'above' if diff > 0 else 'below'}"
    return (f"On this data the best {what} is **{label}** (test {fmt_acc(test)}, chosen by validation accuracy), "
            f"{side} {ref_label} ({fmt_acc(base)}).")  # fmt: skip
