"""A head-only run that refuses a changed weights file (issue 15, item 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.backbones import ResolvedWeights, build_base
from core.config import RunConfig
from core.errors import WeightsError
from core.runs import load_classifier
from core.store import Store
from core.train import train

TINY = RunConfig(backbone="densenet121", weights="none", remove_blocks=3, image_size=32, epochs=2, batch_size=8, val_fraction=0.25)
LITE0 = TINY.replace(backbone="efficientnet_lite0")  # builds three times faster than DenseNet121 (141 layers, not 427)


# -- issue 15, item 4: a head-only run on a weights file -------------------------------------------------
def save_random_backbone(path: Path, seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)
    build_base(LITE0.backbone, 32, ResolvedWeights("none", None, "x")).save_weights(path)


def test_a_run_on_a_weights_file_refuses_a_changed_or_missing_file(tiny_dataset, tmp_path):
    weights = tmp_path / "mine.weights.h5"
    save_random_backbone(weights, seed=1)
    record = train(LITE0.replace(weights=str(weights)), tiny_dataset, Store(tmp_path / "a")).record
    assert not record.model_path.exists() and (record.path / "head.weights.h5").is_file()  # only the head is kept
    load_classifier(record)  # the same file: rebuilt
    save_random_backbone(weights, seed=2)  # other weights under the same name
    with pytest.raises(WeightsError, match="has changed since") as exc:
        load_classifier(record)
    msg = str(exc.value)
    assert record.run_id in msg and str(weights) in msg and "train the run again" in msg and "\n" not in msg
    weights.unlink()
    with pytest.raises(WeightsError, match="which is gone") as exc:
        load_classifier(record)
    assert record.run_id in str(exc.value) and "\n" not in str(exc.value)

