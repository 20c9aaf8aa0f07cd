"""What identifies a run: its config, the dataset's fingerprint and the weights' identity, hashed.

``prepare`` resolves a config against a dataset folder and its weights without decoding or training
anything, so the app and the CLI can name a run (and find it in the store) at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.config import RunConfig, hashed_config, stable_hash
from core.data.arrays import DatasetInfo, scan_dataset
from core.models.backbones import ResolvedWeights, get_backbone, resolve_weights
from core.store.folders import CACHE_FORMAT_VERSION, RunRecord, Store


def resolve_freeze_blocks(cfg: RunConfig) -> int:
    """Blocks kept frozen when the backbone trains (validated); 0 for head-only runs, where all are."""
    if cfg.phase == "head":
        return 0
    get_backbone(cfg.backbone).prefix_layer(cfg.remove_blocks, cfg.freeze_blocks)  # validates
    return cfg.freeze_blocks


def run_id_for(cfg: RunConfig, fingerprint: str, weights: ResolvedWeights) -> str:
    """The run's id: frozen blocks enter it only where they apply, so earlier ids stay valid."""
    payload: dict[str, Any] = {
        "config": hashed_config(cfg),
        "dataset": fingerprint,
        "weights": weights.identity,
        "v": CACHE_FORMAT_VERSION,
    }
    freeze = resolve_freeze_blocks(cfg)
    if freeze:
        payload["freeze_blocks"] = int(freeze)
    return stable_hash(payload)


@dataclass
class Prepared:
    """A config resolved against a dataset and weights: everything needed to find or train a run."""

    cfg: RunConfig
    info: DatasetInfo
    weights: ResolvedWeights
    run_id: str
    freeze_blocks: int = 0
    legacy_run_id: str | None = None  # the id under the dataset's legacy (mtime) fingerprint

    def stored(self, store: Store) -> RunRecord | None:
        """The stored run of this config: under its id, or under the id runs had before datasets were
        identified by content (so runs trained then are still found)."""
        record = store.load_run(self.run_id)
        if record is None and self.legacy_run_id and self.legacy_run_id != self.run_id:
            record = store.load_run(self.legacy_run_id)
        return record

    @property
    def prefix_layer(self) -> str | None:
        """The layer ending the frozen prefix of partial fine-tuning (None: nothing kept frozen)."""
        if not self.freeze_blocks:
            return None
        return get_backbone(self.cfg.backbone).prefix_layer(self.cfg.remove_blocks, self.freeze_blocks)


def prepare(
    cfg: RunConfig, data_root: str | os.PathLike[str], info: DatasetInfo | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> Prepared:  # fmt: skip
    """Validate the config, scan the dataset (or take ``info``, a scan of it that a caller preparing many
    configs made once; ``progress`` hears the scan's) and resolve weights (no decoding, no training)."""
    cfg.validate()
    cfg = cfg.replace(aug_copies=cfg.resolved_aug_copies)  # stored as trained: copies only where they apply
    freeze = resolve_freeze_blocks(cfg)
    info = info if info is not None else scan_dataset(data_root, progress)
    weights = resolve_weights(cfg.backbone, cfg.weights)
    legacy = run_id_for(cfg, info.legacy_fingerprint, weights) if info.legacy_fingerprint else None
    return Prepared(cfg, info, weights, run_id_for(cfg, info.fingerprint, weights), freeze, legacy)
