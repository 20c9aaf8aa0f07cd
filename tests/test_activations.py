"""Feature maps and Grad-CAM on tiny random-weight classifiers, and the ImageNet Lite0 inspector."""

from __future__ import annotations

import numpy as np
import pytest

from core.data import scan
from core.errors import WeightsError
from core.explain import activations as act
from core.explain import render
from core.models import imagenet
from core.models.backbones import ResolvedWeights
from core.models.model import build_classifier
from core.training import metrics

NONE = ResolvedWeights("none", None, "test:none")


def _image(size: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, size)
    img = np.stack([*np.meshgrid(x, x[::-1]), np.full((size, size), 128.0)], axis=-1)
    return np.clip(img + rng.normal(0, 30, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def dense() -> act.Inspector:
    import keras

    keras.utils.set_random_seed(0)
    clf = build_classifier("densenet121", 32, 3, weights=NONE, remove_blocks=3)
    return act.Inspector(clf.model, classes=["coast", "forest", "street"], background_compile=False)


@pytest.fixture(scope="module")
def lite() -> act.Inspector:
    import keras

    keras.utils.set_random_seed(0)
    clf = build_classifier("efficientnet_lite0", 32, 3, weights=NONE)
    return act.Inspector(clf.model, background_compile=False)


def test_conv_layers_densenet_cut_in_order(dense):
    layers = act.conv_layers(dense.model)
    assert layers == [f"conv2_block{i}_concat" for i in range(1, 7)] + ["pool2_pool"]
    assert dense.layers == layers and dense.last_layer == "pool2_pool"
    # inner relus of the dense blocks are not offered, only block outputs
    assert not any(name.endswith("_relu") for name in layers)


def test_conv_layers_lite0_one_per_block(lite):
    layers = lite.layers
    assert layers[0] == "block1a_project_bn" and layers[-1] == "top_activation"
    assert "block2b_add" in layers and "block2b_project_bn" not in layers  # a residual block's output is its add
    assert len(layers) == 16 + 1  # 16 MBConv blocks and the head conv
    order = [int(n[5]) for n in layers[:-1]]
    assert order == sorted(order)


def test_feature_maps_shape_for_a_named_layer(dense):
    img = _image(32)
    maps = dense.feature_maps(img, "conv2_block3_concat")
    assert maps.shape == (8, 8, 64 + 3 * 32)  # 32 px -> stem /2 -> pool /2; 64 channels + 32 per block
    assert maps.dtype == np.float32
    assert dense.feature_maps(img).shape == (4, 4, 128)  # default: the last conv layer (after pool2)


def test_grad_cam_heatmap_range_and_default_class(dense):
    img = _image(32, seed=1)
    probs = dense.predict(img)
    assert probs.shape == (3,) and abs(float(probs.sum()) - 1.0) < 1e-4
    heat, cls = dense.grad_cam(img)
    assert cls == int(np.argmax(probs))
    assert heat.shape == (4, 4) and heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0 and heat.max() > 0.0
    heat_mid, _ = dense.grad_cam(img, layer="conv2_block2_concat")
    assert heat_mid.shape == (8, 8) and heat_mid.min() >= 0.0 and heat_mid.max() <= 1.0
    other = (cls + 1) % 3
    _, used = dense.grad_cam(img, class_index=other)
    assert used == other


def test_inspect_is_one_consistent_pass(dense):
    img = _image(32, seed=2)
    r = dense.inspect(img, "conv2_block4_concat")
    np.testing.assert_allclose(r.probs, dense.predict(img), atol=1e-5)
    np.testing.assert_allclose(r.maps, dense.feature_maps(img, "conv2_block4_concat"), atol=1e-4)
    assert r.heatmap.shape == r.maps.shape[:2]
    assert dense.is_warm("conv2_block4_concat")


def test_background_compile_answers_eagerly_then_compiles(dense):
    inspector = act.Inspector(dense.model, classes=dense.classes)  # background compilation (the default)
    img = _image(32, seed=4)
    eager = inspector.inspect(img, "conv2_block5_concat")  # answered eagerly, compiled behind
    assert inspector.wait_compiled(timeout=120)
    assert inspector.is_warm("conv2_block5_concat") and not inspector.is_warm()
    compiled = inspector.inspect(img, "conv2_block5_concat")
    np.testing.assert_allclose(eager.probs, compiled.probs, atol=1e-5)
    np.testing.assert_allclose(eager.heatmap, compiled.heatmap, atol=1e-4)
    assert eager.class_index == compiled.class_index
    inspector.warm()  # the last conv layer, compiled in the foreground
    assert inspector.is_warm("pool2_pool")


def test_grad_cam_lite0(lite):
    img = _image(32, seed=3)
    heat, cls = lite.grad_cam(img, layer="block3b_add")
    assert heat.shape == (4, 4) and heat.min() >= 0.0 and heat.max() <= 1.0
    assert cls == int(np.argmax(lite.predict(img)))


def test_unknown_layer_says_what_was_received_and_allowed(dense):
    with pytest.raises(ValueError, match=r"Received: layer='conv9_block1_concat'") as info:
        dense.feature_maps(_image(32), "conv9_block1_concat")
    assert "conv2_block1_concat" in str(info.value) and "pool2_pool" in str(info.value)
    with pytest.raises(ValueError, match="Received: layer='nope'"):
        dense.grad_cam(_image(32), layer="nope")


def test_bad_image_shape_and_class_are_refused(dense):
    with pytest.raises(ValueError, match=r"Received: shape=\(64, 64, 3\)"):
        dense.predict(_image(64))
    with pytest.raises(ValueError, match="Received: class_index=7"):
        dense.grad_cam(_image(32), class_index=7)


def test_overlay_and_channel_grid_shapes_and_dtypes(dense):
    img = _image(32)
    heat, _ = dense.grad_cam(img)
    out = render.overlay(img, heat)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    big = render.overlay(np.zeros((96, 96, 3), np.uint8), heat, alpha=1.0)
    assert big.shape == (96, 96, 3) and big.max() > 0  # pure heatmap colours
    assert np.array_equal(render.overlay(img, heat, alpha=0.0), img)

    maps = dense.feature_maps(img, "conv2_block1_concat")  # (8, 8, 96)
    grid = render.channel_grid(maps, 16, min_tile=48, pad=2)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    assert grid.shape[:2] == (4 * 48 + 5 * 2, 4 * 48 + 5 * 2)  # 4x4 tiles of 8 px enlarged x6
    small = render.channel_grid(maps[:, :, :3], 16, min_tile=8, pad=1)  # fewer channels than asked
    assert small.shape[:2] == (2 * 8 + 3, 2 * 8 + 3)


def test_top_channels_and_top_k():
    maps = np.zeros((2, 2, 5), np.float32)
    maps[:, :, 3] = 5.0
    maps[:, :, 1] = 2.0
    assert render.top_channels(maps, 2) == [3, 1]
    probs = np.array([0.1, 0.6, 0.3])
    assert metrics.top_k(probs, ["a", "b", "c"], k=2) == [("b", pytest.approx(0.6)), ("c", pytest.approx(0.3))]
    with pytest.raises(ValueError, match="Received: 2 names"):
        metrics.top_k(probs, ["a", "b"])


def test_imagenet_class_names():
    names = imagenet.imagenet_class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    # from tensorflow-datasets when installed (a keras-cv dependency), else generic labels
    assert names[285] in ("Egyptian cat", "ImageNet class 285")


def test_lite0_imagenet_inspector_sees_a_cat(tmp_path, monkeypatch):
    from skimage.data import chelsea

    from core.data.arrays import decode_image

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # the one-off conversion goes to a temp dir
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(chelsea()).save(buf, format="PNG")
    img = decode_image(buf.getvalue(), 224)
    inspector = act.imagenet_inspector("efficientnet_lite0", 224)
    assert (tmp_path / "keras" / "models" / "efficientnet_lite0_imagenet.weights.h5").is_file()
    probs = inspector.predict(img)
    assert probs.shape == (1000,)
    top3 = [int(i) for i in np.argsort(-probs)[:3]]
    assert any(281 <= i <= 285 for i in top3), top3  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    ranked = metrics.top_k(probs, inspector.classes, 3)
    assert len(ranked) == 3 and ranked[0][1] >= ranked[1][1]
    heat, cls = inspector.grad_cam(img)
    assert cls == top3[0] and heat.shape == (7, 7) and heat.max() == pytest.approx(1.0)
    assert inspector.layers[-1] == "top_activation"


def test_densenet_imagenet_without_weights_is_one_sentence(tmp_path, monkeypatch):
    """Nothing cached (an empty KERAS_HOME) and the download failing as it does offline: the registry's own
    sentence, naming the missing file and the offline backbone, reaches the caller."""
    import keras

    def offline(*args: object, **kwargs: object) -> str:
        raise OSError(101, "Network is unreachable")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(keras.utils, "get_file", offline)
    with pytest.raises(WeightsError) as exc:
        act.imagenet_inspector("densenet121", 32)
    sentence = str(exc.value)
    assert sentence.startswith("DenseNet121 ImageNet weights are not cached (") and "\n" not in sentence
    assert str(tmp_path / "keras" / "models") in sentence and "efficientnet_lite0" in sentence


def test_densenet_imagenet_backbone_gives_feature_maps_only(monkeypatch):
    # stand-in for cached weights: the same code path with a random initialisation
    monkeypatch.setattr(act, "resolve_weights", lambda b, w: ResolvedWeights("imagenet", None, "fake"))
    inspector = act.imagenet_inspector("densenet121", 32)
    assert not inspector.has_head and inspector.classes is None
    assert inspector.layers[-1] == "relu" and "pool4_pool" in inspector.layers
    assert inspector.feature_maps(_image(32), "conv3_block1_concat").shape == (4, 4, 160)
    with pytest.raises(ValueError, match="feature maps only"):
        inspector.grad_cam(_image(32))


def test_test_images_lists_each_class(tiny_dataset):
    per_class = scan.test_images(tiny_dataset)
    assert list(per_class) == ["coast", "forest", "street"]
    assert all(len(paths) == 3 for paths in per_class.values())
    assert per_class["coast"][0].endswith("test/coast/coast_0.jpg")
