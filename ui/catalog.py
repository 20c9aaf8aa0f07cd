"""The app's pages: one table that app.py's navigation, links between pages and run names all read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PageInfo:
    key: str  # session-key prefix and URL path
    number: str  # "0".."6", or "" for pages that are not a task of the study
    title: str
    file: str
    icon: str
    takes_runs: bool = False  # a run's settings can be opened in it

    @property
    def label(self) -> str:
        return f"{self.number} {self.title}".strip()


PAGES: tuple[PageInfo, ...] = (
    PageInfo("study", "", "Study", "pages/study.py", ":material/school:"),
    PageInfo("finetune", "0", "Fine-tune", "pages/finetune.py", ":material/tune:", True),
    PageInfo("truncate", "1", "Truncate", "pages/truncate.py", ":material/content_cut:", True),
    PageInfo("small_data", "2", "Small data", "pages/small_data.py", ":material/photo_library:", True),
    PageInfo("augmentation", "3", "Augmentation", "pages/augmentation.py", ":material/auto_awesome:", True),
    PageInfo("regularisation", "4", "Regularisation", "pages/regularisation.py", ":material/shield:", True),
    PageInfo("search", "5", "Hyperparameter search", "pages/search.py", ":material/search:"),
    PageInfo("activations", "6", "Activations", "pages/activations.py", ":material/visibility:"),
    PageInfo("dataset_map", "", "Dataset map", "pages/dataset_map.py", ":material/scatter_plot:"),
    PageInfo("runs", "", "Runs", "pages/runs.py", ":material/table_view:"),
)
BY_KEY = {p.key: p for p in PAGES}


def _study_aug() -> dict[str, Any]:
    from dataclasses import asdict

    from core.study.plan import STUDY_BEST_AUG

    return {k: v for k, v in asdict(STUDY_BEST_AUG).items() if v}


def page_of_run(run: Mapping[str, Any]) -> PageInfo:
    """The task page that best shows a run's settings (its regulariser first, then its augmentation, its data, its cut...)."""
    if run.get("search_study"):
        return BY_KEY["search"]
    aug = {k: v for k, v in (run.get("augment") or {}).items() if v}
    if (
        run.get("phase") == "head"
        and aug in ({}, _study_aug())
        and (
            run.get("dropout")
            or run.get("batch_norm")
            or run.get("early_stopping_patience")
            or run.get("reduce_lr_patience")
        )
    ):
        return BY_KEY["regularisation"]  # page 4 (its toggle: none or the study's best augmentation) shows it whole
    if any((run.get("augment") or {}).values()):
        return BY_KEY["augmentation"]
    if run.get("train_per_class") is not None:
        return BY_KEY["small_data"]
    if run.get("remove_blocks") or run.get("dense_1024"):
        return BY_KEY["truncate"]
    return BY_KEY["finetune"]  # the head alone, or with the whole network: page 0
