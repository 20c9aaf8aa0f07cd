"""Each explanation method is right: a tiny network learns that a bright patch's colour is the class, so the
evidence is the patch, and every method's map must peak inside it (and the check must fail on a wrong map)."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ConfigError
from core.explain import heatmaps as ex
from core.explain.activations import Inspector

SIZE, PATCH = 32, 8
COLOURS = np.array([(235, 40, 40), (40, 235, 40), (40, 40, 235)], np.float32)  # the class is the patch's colour


def patch_image(cls: int, seed: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Dim noise with one bright ``PATCH``-wide square of the class's colour at a random place."""
    rng = np.random.default_rng(seed)
    img = rng.normal(70, 12, (SIZE, SIZE, 3))
    r, c = (int(v) for v in rng.integers(0, SIZE - PATCH + 1, 2))
    img[r : r + PATCH, c : c + PATCH] = COLOURS[cls] + rng.normal(0, 8, (PATCH, PATCH, 3))
    return np.clip(img, 0, 255).astype(np.uint8), (r, c)


def tiny_classifier(seed: int = 0):
    """image -> preprocess -> a 3-conv backbone (16x16 maps) -> avg_pool -> head, like a SceneLab classifier."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    b_in = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(b_in)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3")(x)
    backbone = keras.Model(b_in, x, name="tiny_cnn")
    f_in = keras.Input((32,), name="features")
    head = keras.Model(f_in, keras.layers.Dense(3, activation="softmax", name="pred")(f_in), name="head")
    x = keras.layers.Rescaling(1.0 / 255, name="preprocess")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(backbone(x))
    return keras.Model(inputs, head(pooled), name="tiny_classifier")


@pytest.fixture(scope="module")
def trained() -> Inspector:
    import keras

    model = tiny_classifier()
    pairs = [patch_image(i % 3, 10_000 + i) for i in range(360)]
    x = np.stack([p[0] for p in pairs]).astype("float32")
    y = np.arange(360) % 3
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=12, batch_size=32, verbose=0)
    return Inspector(model, classes=["red", "green", "blue"], background_compile=False)


def peak_in_patch(heat: np.ndarray, corner: tuple[int, int]) -> bool:
    """Whether the centre of the map's hottest cell lies in the patch, give or take one cell."""
    h, w = heat.shape
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    y, x = (r + 0.5) * SIZE / h, (c + 0.5) * SIZE / w
    tol = SIZE / h
    return corner[0] - tol <= y <= corner[0] + PATCH + tol and corner[1] - tol <= x <= corner[1] + PATCH + tol


TEST_IMAGES = [(cls, patch_image(cls, 500 + k)) for k in range(4) for cls in range(3)]


def test_the_tiny_network_learned_the_patch_colour(trained):
    right = [int(np.argmax(trained.predict(img))) == cls for cls, (img, _) in TEST_IMAGES]
    assert all(right), right


@pytest.mark.parametrize("method", list(ex.METHODS))
def test_each_method_peaks_inside_the_patch(trained, method):
    misses, wrong_maps_hit = [], 0
    for cls, (img, corner) in TEST_IMAGES:
        e = ex.explain(trained, img, method=method)
        assert e.method == method and e.class_index == cls and e.layer == "conv3"
        assert e.heatmap.dtype == np.float32 and e.heatmap.min() >= 0.0 and e.heatmap.max() == pytest.approx(1.0)
        if not peak_in_patch(e.heatmap, corner):
            misses.append((cls, corner, np.unravel_index(int(np.argmax(e.heatmap)), e.heatmap.shape)))
        wrong_maps_hit += peak_in_patch(e.heatmap[::-1, ::-1], corner)  # the same check on a wrong map
    assert not misses, f"{method}: maximum outside the patch for {misses}"
    assert wrong_maps_hit <= len(TEST_IMAGES) // 4, "the check does not tell a right map from a wrong one"


def test_map_sizes_follow_the_method(trained):
    img, _ = TEST_IMAGES[0][1]
    assert ex.explain(trained, img, method="gradcam").heatmap.shape == (16, 16)  # the block's cells
    assert ex.explain(trained, img, method="scorecam").heatmap.shape == (16, 16)
    assert ex.explain(trained, img, method="occlusion").heatmap.shape == (ex.OCCLUSION_CELLS,) * 2  # the grid's


def test_any_class_can_be_explained_and_bad_requests_are_one_sentence(trained):
    img, _ = TEST_IMAGES[0][1]  # a red patch
    for method in ex.METHODS:
        assert ex.explain(trained, img, method=method, class_index=2).class_index == 2
    assert ex.class_index_of(trained.classes, "Blue") == 2 and ex.class_index_of(trained.classes, None) is None
    with pytest.raises(ConfigError, match="Unknown class 'purple'.*red, green, blue"):
        ex.class_index_of(trained.classes, "purple")
    with pytest.raises(ConfigError, match="Unknown method 'lime'"):
        ex.explain(trained, img, method="lime")
    with pytest.raises(ValueError, match="Received: layer='conv9'"):
        ex.explain(trained, img, layer="conv9")


def test_compare_before_and_after_training(trained):
    before = Inspector(tiny_classifier(seed=1), classes=trained.classes, background_compile=False)
    img, _ = TEST_IMAGES[4][1]
    c = ex.compare(before, trained, img, method="gradcam")
    assert c.before is not None and c.after.class_index == TEST_IMAGES[4][0]
    assert c.difference.shape == c.after.heatmap.shape == c.before_map.shape
    np.testing.assert_allclose(c.difference, np.clip(c.after.heatmap - c.before_map, -1, 1), atol=1e-6)
    assert -1.0 <= c.difference.min() <= c.difference.max() <= 1.0


def test_difference_resizes_and_energy_is_class_free():
    d = ex.difference(np.ones((4, 4), np.float32), np.zeros((8, 8), np.float32))
    assert d.shape == (8, 8) and np.allclose(d, -1.0)
    maps = np.zeros((4, 4, 3), np.float32)
    maps[1, 2] = [1.0, -5.0, 2.0]
    e = ex.energy(maps)
    assert e.max() == 1.0 and np.unravel_index(int(np.argmax(e)), e.shape) == (1, 2)
