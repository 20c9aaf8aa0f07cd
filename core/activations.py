"""Feature maps and Grad-CAM for a trained classifier or an ImageNet backbone.

A SceneLab classifier is ``image (0..255) -> preprocess -> backbone (nested functional model)
-> avg_pool -> head``. :class:`Inspector` takes such a model apart once and builds, per conv
layer, a functional sub-model ``preprocessed image -> [layer output, backbone output]``
(keras-io ``functional_api.py``) wrapped in a ``tf.function``. The avg pool and the head are
then applied to the backbone output under a ``tf.GradientTape``, which gives Grad-CAM
(Selvaraju et al., 2017): the gradient of the class score (the logit before softmax) with
respect to the layer's output, averaged over space to weigh each channel, and the ReLU of the
weighted sum of the channels. Everything built is cached inside the Inspector, so a warm
(Inspector, layer) pair answers in one forward and one partial backward pass. Tracing a layer's
function takes seconds, so by default the first calls for a layer run eagerly while a
background thread traces it (see :class:`Inspector`).

The colour maps (a jet-like map for Grad-CAM, a viridis-like one for feature maps) are small
numpy look-up tables, so nothing here needs matplotlib.
"""

from __future__ import annotations

import ast
import atexit
import functools
import importlib.util
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.data import ImageDecodeError, decode_image, scan_dataset

logger = logging.getLogger(__name__)

__all__ = [
    "Inspection",
    "Inspector",
    "channel_grid",
    "conv_layers",
    "decode_upload",
    "imagenet_class_names",
    "imagenet_inspector",
    "overlay",
    "test_images",
    "top_channels",
    "top_k",
]

# Block outputs offered for inspection, per backbone family (input to output).
_DENSENET_BLOCK = re.compile(r"^(conv\d+_block\d+_concat|pool\d+_pool|relu)$")
_LITE0_BLOCK = re.compile(r"^(block\d+[a-z])_(project_bn|add)$")
_LITE0_TOP = "top_activation"
IMAGENET_CLASSES = 1000
UPLOAD_TYPES = ("jpg", "jpeg", "png", "bmp", "gif", "webp")
MAX_PENDING_COMPILES = 2  # background compilations queued at most (older requests are dropped)

# Background compile threads are daemons; at interpreter exit no new compilation starts and the one
# running is waited for (bounded). The exit hook is registered when the first thread starts, after
# TensorFlow's and Keras's own, so it runs before them (atexit is last in, first out): a trace cut
# short by their clean-up was seen to fail.
_STOPPING = threading.Event()
_WORKERS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()
_EXIT_HOOK = threading.Lock()
_exit_hook_registered = False


def _stop_workers(timeout: float = 30.0) -> None:
    _STOPPING.set()
    deadline = time.monotonic() + timeout
    for thread in list(_WORKERS):
        thread.join(max(0.0, deadline - time.monotonic()))


def _register_exit_hook() -> None:
    global _exit_hook_registered
    with _EXIT_HOOK:
        if not _exit_hook_registered:
            atexit.register(_stop_workers)
            _exit_hook_registered = True


# -- taking a classifier apart ------------------------------------------------------------------------
def _backbone_of(classifier: Any) -> Any:
    """The nested backbone model of a SceneLab classifier."""
    import keras

    nested = [layer for layer in classifier.layers if isinstance(layer, keras.Model) and layer.name != "head"]
    if len(nested) != 1:
        found = ", ".join(f"{layer.name} ({type(layer).__name__})" for layer in classifier.layers)
        raise ValueError(
            "Expected a classifier holding exactly one nested backbone model "
            f"(image -> preprocess -> backbone -> avg_pool -> head). Received: layers=[{found}]"
        )
    return nested[0]


def _block_outputs(names: Sequence[str]) -> list[str]:
    """Block outputs among ``names`` (in order): DenseNet concat/pool/final relu, Lite0 block ends."""
    dense = [n for n in names if _DENSENET_BLOCK.match(n)]
    lite: list[str] = []
    last_prefix: str | None = None
    for name in names:
        m = _LITE0_BLOCK.match(name)
        if m:
            prefix = m.group(1)
            if prefix == last_prefix:  # a residual block: its add replaces its project_bn
                lite[-1] = name
            else:
                lite.append(name)
            last_prefix = prefix
        elif name == _LITE0_TOP:
            lite.append(name)
    return dense if len(dense) >= len(lite) else lite


def _layer_names(backbone: Any) -> list[str]:
    return [layer.name for layer in backbone.layers]


def conv_layers(classifier: Any) -> list[str]:
    """The conv-block outputs of ``classifier``'s backbone offered for inspection, input to output.

    DenseNet121: ``conv{2..5}_block{i}_concat``, ``pool{2,3,4}_pool`` and the final ``relu``;
    EfficientNet-Lite0: each block's output (``block{n}{x}_add`` for residual blocks, else
    ``block{n}{x}_project_bn``) and ``top_activation``. The last one is the backbone's output
    (the last conv layer). ``classifier`` may also be a bare backbone model.
    """
    import keras

    has_nested = any(isinstance(layer, keras.Model) for layer in classifier.layers)
    backbone = _backbone_of(classifier) if has_nested else classifier
    names = _layer_names(backbone)
    offered = _block_outputs(names)
    out_name = _output_layer_name(backbone)
    if out_name not in offered:  # a backbone of another family: at least its output
        offered.append(out_name)
    return offered


def _output_layer_name(model: Any) -> str:
    history = getattr(model.outputs[0], "_keras_history", None)
    if history is not None:
        return str(history[0].name)
    return str(model.layers[-1].name)


# -- the inspector ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inspection:
    """Everything the page shows for one image and one layer, from one pass."""

    layer: str
    maps: np.ndarray  # (h, w, channels) the layer's output
    probs: np.ndarray  # (classes,)
    heatmap: np.ndarray  # (h, w) Grad-CAM in [0, 1]
    class_index: int  # the class Grad-CAM explains


class Inspector:
    """Feature maps, predictions and Grad-CAM of one classifier; sub-models cached per layer.

    Build it once per classifier and reuse it. Per layer, a functional sub-model is built (cheap)
    and a ``tf.function`` over it is traced (seconds for DenseNet121); once traced, a call is one
    pass (tens of milliseconds). With ``background_compile`` (the default) the first calls for a
    layer run eagerly (about ten times slower than compiled, still far quicker than tracing) while
    a background thread traces the layer's function; without it, the first call traces and waits.
    Thread-safe, for Streamlit's shared ``st.cache_resource``.
    """

    def __init__(
        self, classifier: Any, classes: Sequence[str] | None = None, *, background_compile: bool = True
    ) -> None:
        self.model = classifier
        self.backbone = _backbone_of(classifier)
        layers = {layer.name: layer for layer in classifier.layers}
        self._preprocess = layers.get("preprocess")
        self._avg_pool = layers.get("avg_pool")
        if self._avg_pool is None:
            raise ValueError(
                f"Expected a classifier with an 'avg_pool' layer after its backbone. Received: layers={list(layers)}"
            )
        self._head = layers.get("head")
        shape = tuple(classifier.inputs[0].shape)
        if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
            raise ValueError(f"Expected a classifier taking square RGB images. Received: input shape={shape}")
        self.image_size = int(shape[1])
        self.layers = conv_layers(classifier)
        self.last_layer = self.layers[-1]
        self.classes = list(classes) if classes is not None else None
        self._head_pre, self._pred = self._split_head()
        self.background_compile = background_compile
        self._lock = threading.RLock()
        # Keras layers are not safe to run from two threads at once (tracing one sub-model while
        # another runs eagerly through the same layers was seen to fail), so every Python-level
        # pass through the layers takes this lock; compiled functions run without it.
        self._keras_lock = threading.RLock()
        self._subs: dict[tuple[str, str], Any] = {}
        self._compiled: dict[tuple[str, str], Callable[..., Any]] = {}
        self._queue: list[tuple[str, str]] = []
        self._worker: threading.Thread | None = None

    # -- structure --------------------------------------------------------------------------------
    @property
    def has_head(self) -> bool:
        """False for a bare ImageNet backbone: feature maps only, no prediction or Grad-CAM."""
        return self._head is not None

    @property
    def num_classes(self) -> int:
        return int(self._head.outputs[0].shape[-1]) if self._head is not None else 0

    def _split_head(self) -> tuple[Any, Any]:
        """(head up to its last layer, last Dense layer if it is a softmax Dense, else None)."""
        import keras

        if self._head is None:
            return None, None
        last = self._head.layers[-1]
        if isinstance(last, keras.layers.Dense) and getattr(last.activation, "__name__", "") == "softmax":
            pre = keras.Model(self._head.inputs, last.input, name="head_pre_logits")
            return pre, last
        return None, None

    def check_layer(self, layer: str | None) -> str:
        """``layer`` if it is offered (None means the last conv layer); else ValueError."""
        if layer is None:
            return self.last_layer
        if layer not in self.layers:
            raise ValueError(
                f"Unknown layer {layer!r} for backbone {self.backbone.name}; expected one of "
                f"{', '.join(self.layers)}. Received: layer={layer!r}"
            )
        return layer

    def _batch(self, image: np.ndarray) -> Any:
        import tensorflow as tf

        arr = np.asarray(image)
        expected = (self.image_size, self.image_size, 3)
        if arr.shape != expected:
            raise ValueError(
                f"Expected one RGB image of shape {expected} (decode it at the model's size). "
                f"Received: shape={arr.shape}"
            )
        return tf.convert_to_tensor(arr[None].astype("float32"))

    def _logits_probs(self, pooled: Any) -> tuple[Any, Any]:
        import tensorflow as tf

        if self._pred is not None:
            x = self._head_pre(pooled, training=False)
            logits = tf.matmul(x, self._pred.kernel)
            if self._pred.use_bias:
                logits = logits + self._pred.bias
            return logits, tf.nn.softmax(logits)
        probs = self._head(pooled, training=False)
        return tf.math.log(tf.maximum(probs, 1e-12)), probs

    def _prep(self, images: Any) -> Any:
        return self._preprocess(images) if self._preprocess is not None else images

    # -- functions per layer: eager bodies, compiled once --------------------------------------------
    def _sub(self, kind: str, layer: str) -> Any:
        """The functional sub-model for ``kind`` at ``layer`` (cheap to build; cached)."""
        import keras

        with self._lock:
            sub = self._subs.get((kind, layer))
            if sub is None:
                bb = self.backbone
                if kind == "maps":
                    sub = keras.Model(bb.inputs, bb.get_layer(layer).output, name=f"maps_{layer}")
                elif kind == "cam":
                    outputs = [bb.get_layer(layer).output, bb.outputs[0]]
                    sub = keras.Model(bb.inputs, outputs, name=f"cam_{layer}")
                else:
                    sub = self.model
                self._subs[(kind, layer)] = sub
            return sub

    def _body(self, kind: str, layer: str) -> Callable[..., Any]:
        """The Python function for ``kind`` at ``layer``; runs eagerly or inside a tf.function."""
        import tensorflow as tf

        sub = self._sub(kind, layer)
        if kind == "maps":
            return lambda images: sub(self._prep(images), training=False)
        if kind == "predict":
            return lambda images: sub(images, training=False)[0]

        def cam(images: Any, class_index: Any) -> Any:
            x = self._prep(images)
            with tf.GradientTape() as tape:
                maps, out = sub(x, training=False)
                logits, probs = self._logits_probs(self._avg_pool(out))
                chosen = tf.where(class_index < 0, tf.argmax(probs[0], output_type=tf.int32), class_index)
                score = tf.gather(logits[0], chosen)  # the class score before softmax
            grads = tape.gradient(score, maps)
            weights = tf.reduce_mean(grads[0], axis=(0, 1))  # one weight per channel
            heat = tf.nn.relu(tf.reduce_sum(maps[0] * weights, axis=-1))
            top = tf.reduce_max(heat)
            heat = tf.where(top > 0, heat / tf.maximum(top, 1e-12), heat)
            return maps[0], probs[0], heat, chosen

        return cam

    def _args(self, kind: str) -> list[Any]:
        import tensorflow as tf

        spec = [tf.TensorSpec((1, self.image_size, self.image_size, 3), tf.float32)]
        return spec + [tf.TensorSpec((), tf.int32)] if kind == "cam" else spec

    def _compile(self, key: tuple[str, str]) -> Callable[..., Any]:
        """Trace ``key``'s tf.function and run it once (the slow part), then publish it."""
        import tensorflow as tf

        with self._keras_lock:  # one compilation at a time; a second asker waits and reuses it
            fn = self._compiled.get(key)
            if fn is not None:
                return fn
            t0 = time.perf_counter()
            kind, layer = key
            # a partial has no __code__, so TensorFlow counts each layer's function on its own and does
            # not warn of "excessive retracing" when several layers (same code) are compiled in turn
            body = functools.partial(self._body(kind, layer))
            fn = tf.function(body, input_signature=self._args(kind), reduce_retracing=True, autograph=False)
            dummy = [
                tf.zeros(a.shape, a.dtype) if a.dtype != tf.int32 else tf.constant(-1, tf.int32)
                for a in self._args(kind)
            ]
            fn(*dummy)  # trace and optimise the graph now
            with self._lock:
                self._compiled[key] = fn
            logger.debug("compiled %s function for %s in %.1f s", kind, layer or "model", time.perf_counter() - t0)
            return fn

    def _call(self, kind: str, layer: str, *args: Any) -> Any:
        key = (kind, layer)
        fn = self._compiled.get(key)
        if fn is not None:
            return fn(*args)
        if not self.background_compile:
            return self._compile(key)(*args)
        with self._keras_lock:  # eager: slower than compiled, far faster than compiling
            fn = self._compiled.get(key)  # compiled while this call waited for the lock
            if fn is None:
                out = self._body(kind, layer)(*args)
        if fn is not None:
            return fn(*args)
        self._schedule(key)
        return out

    def _schedule(self, key: tuple[str, str]) -> None:
        """Compile ``key`` in a background thread (the two most recent requests are kept)."""
        with self._lock:
            if key in self._compiled or key in self._queue:
                return
            self._queue.append(key)
            while len(self._queue) > MAX_PENDING_COMPILES:
                dropped = self._queue.pop(0)
                logger.debug("not compiling %s after all (newer requests came first)", dropped)
            if self._worker is None and not _STOPPING.is_set():
                _register_exit_hook()
                self._worker = threading.Thread(target=self._work, name="inspector-compile", daemon=True)
                _WORKERS.add(self._worker)
                self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue or _STOPPING.is_set():
                    self._queue.clear()
                    self._worker = None  # the thread ends, so it keeps no Inspector alive
                    return
                key = self._queue[0]
            try:
                self._compile(key)
            except Exception as exc:  # an eager call still answers; say why compiling failed
                logger.warning("Compiling %s for %s failed (%s); it keeps running uncompiled.", key[0], key[1], exc)
            finally:
                with self._lock:
                    if key in self._queue:
                        self._queue.remove(key)

    def wait_compiled(self, timeout: float = 120.0) -> bool:
        """Wait until background compilation is done; True if nothing is left pending."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._queue and self._worker is None:
                    return True
            time.sleep(0.05)
        return False

    def _require_head(self) -> None:
        if self._head is None:
            raise ValueError(
                f"The model {self.model.name} is a bare backbone without a classification head; "
                "it gives feature maps only. Received: a model without a 'head' layer"
            )

    def _class_arg(self, class_index: int | None) -> Any:
        import tensorflow as tf

        if class_index is None:
            return tf.constant(-1, tf.int32)
        if not 0 <= int(class_index) < self.num_classes:
            raise ValueError(
                f"class_index must be in 0..{self.num_classes - 1} for this model. Received: class_index={class_index}"
            )
        return tf.constant(int(class_index), tf.int32)

    # -- public ---------------------------------------------------------------------------------
    def is_warm(self, layer: str | None = None) -> bool:
        """True when ``layer``'s function is compiled, so the next call is one fast pass."""
        layer = self.check_layer(layer)
        return (("cam" if self.has_head else "maps"), layer) in self._compiled

    def warm(self, layer: str | None = None) -> None:
        """Compile the function for ``layer`` (default the last conv layer) now, and wait for it."""
        layer = self.check_layer(layer)
        self._compile(("cam" if self.has_head else "maps", layer))

    def feature_maps(self, image: np.ndarray, layer: str | None = None) -> np.ndarray:
        """The output of ``layer`` (default the last conv layer) for one image: (h, w, channels)."""
        layer = self.check_layer(layer)
        return np.asarray(self._call("maps", layer, self._batch(image)))[0]

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities for one uint8 image of the model's size."""
        self._require_head()
        return np.asarray(self._call("predict", "", self._batch(image)))

    def grad_cam(
        self, image: np.ndarray, class_index: int | None = None, layer: str | None = None
    ) -> tuple[np.ndarray, int]:
        """Grad-CAM of ``class_index`` (default the predicted class) at ``layer`` (default the last
        conv layer): (heatmap in [0, 1] at the layer's resolution, class index explained)."""
        result = self.inspect(image, layer, class_index)
        return result.heatmap, result.class_index

    def inspect(self, image: np.ndarray, layer: str | None = None, class_index: int | None = None) -> Inspection:
        """Feature maps, probabilities and Grad-CAM at one layer, from one forward/backward pass."""
        self._require_head()
        layer = self.check_layer(layer)
        cls = self._class_arg(class_index)
        maps, probs, heat, chosen = self._call("cam", layer, self._batch(image), cls)
        return Inspection(
            layer=layer,
            maps=np.asarray(maps),
            probs=np.asarray(probs),
            heatmap=np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0),
            class_index=int(chosen),
        )


# -- ImageNet backbone alone ----------------------------------------------------------------------------
def imagenet_class_names() -> list[str]:
    """Short names of the 1000 ImageNet classes, from a list shipped in an installed package
    (tensorflow-datasets, a keras-cv dependency; read as text, not imported), else
    ``ImageNet class <index>``. Repeated names get their index appended."""
    names = _read_imagenet_names()
    if names is None:
        return [f"ImageNet class {i}" for i in range(IMAGENET_CLASSES)]
    short = [n.split(",")[0].strip() for n in names]
    seen: dict[str, int] = {}
    for n in short:
        seen[n] = seen.get(n, 0) + 1
    return [f"{n} ({i})" if seen[n] > 1 else n for i, n in enumerate(short)]


def _read_imagenet_names() -> list[str] | None:
    try:
        spec = importlib.util.find_spec("tensorflow_datasets")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "datasets" / "siscore" / "labels.py"
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "IMAGENET_LABELS_LIST" for t in node.targets
            ):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    return None
                if (
                    isinstance(value, list)
                    and len(value) == IMAGENET_CLASSES
                    and all(isinstance(v, str) for v in value)
                ):
                    return value
    logger.debug("no ImageNet class-name list found in tensorflow_datasets")
    return None


def imagenet_inspector(backbone: str, image_size: int) -> Inspector:
    """An Inspector for a backbone with its ImageNet weights and no fine-tuning.

    EfficientNet-Lite0 comes with its 1000-way ImageNet top (predictions and Grad-CAM over
    ImageNet classes); DenseNet121 only when its weights are cached, and as a bare backbone
    (feature maps only). Raises :class:`core.errors.WeightsError` with a sentence when the
    weights cannot be had.
    """
    import keras

    from core.backbones import build_base, get_backbone, resolve_weights

    spec = get_backbone(backbone)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = spec.preprocess()(inputs)  # type: ignore[operator]
    if backbone == "efficientnet_lite0":
        from core.lite0 import build_lite0, load_imagenet

        full = build_lite0((image_size, image_size, 3), include_top=True)
        load_imagenet(full)
        base = keras.Model(full.inputs, full.get_layer(_LITE0_TOP).output, name="efficientnet_lite0")
        features = keras.Input((int(base.outputs[0].shape[-1]),), name="features")
        pred = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="pred")
        head = keras.Model(features, pred(features), name="head")
        pred.set_weights(full.get_layer("predictions").get_weights())
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base(x, training=False))
        model = keras.Model(inputs, head(pooled), name=f"{backbone}_imagenet")
        return Inspector(model, classes=imagenet_class_names())
    weights = resolve_weights(backbone, "imagenet")
    base = build_base(backbone, image_size, weights)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base(x, training=False))  # type: ignore[operator]
    model = keras.Model(inputs, pooled, name=f"{backbone}_imagenet_backbone")
    return Inspector(model)


# -- images in and out ------------------------------------------------------------------------------
def decode_upload(data: bytes, size: int, name: str = "The uploaded file") -> np.ndarray:
    """Decode an uploaded file to RGB uint8 (size, size, 3); one sentence on failure.

    Raises :class:`core.data.ImageDecodeError` (a :class:`SceneLabError`) for non-images, corrupt
    files and images over 40 megapixels.
    """
    try:
        return decode_image(bytes(data), size)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{name} could not be used as an image: {exc}; try another photo.") from None


def test_images(root: str | os.PathLike[str]) -> dict[str, list[str]]:
    """The dataset's test images per class: ``{class: [absolute path, ...]}`` (DatasetError if bad)."""
    info = scan_dataset(root)
    out: dict[str, list[str]] = {c: [] for c in info.classes}
    for rel, label in info.files["test"]:
        out[info.classes[label]].append(str(info.root / rel))
    return out


def top_k(probs: np.ndarray, classes: Sequence[str], k: int = 3) -> list[tuple[str, float]]:
    """The ``k`` most probable classes with their probabilities, most probable first."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(classes) != len(p):
        raise ValueError(f"Expected one class name per probability ({len(p)}). Received: {len(classes)} names")
    order = np.argsort(-p, kind="stable")[: max(0, int(k))]
    return [(str(classes[i]), float(p[i])) for i in order]


def _lut(anchors: Sequence[tuple[float, tuple[int, int, int]]]) -> np.ndarray:
    xs = np.array([a[0] for a in anchors])
    cols = np.array([a[1] for a in anchors], dtype=np.float64)
    t = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(t, xs, cols[:, c]) for c in range(3)], axis=1).round().astype(np.uint8)


# jet-like: dark blue, blue, cyan, yellow, red, dark red
JET = _lut(
    [
        (0.0, (0, 0, 128)),
        (0.11, (0, 0, 255)),
        (0.36, (0, 255, 255)),
        (0.62, (255, 255, 0)),
        (0.87, (255, 0, 0)),
        (1.0, (128, 0, 0)),
    ]
)
# viridis-like: purple, blue, teal, green, yellow
VIRIDIS = _lut(
    [(0.0, (68, 1, 84)), (0.25, (59, 82, 139)), (0.5, (33, 145, 140)), (0.75, (94, 201, 98)), (1.0, (253, 231, 37))]
)


def colorize(values: np.ndarray, lut: np.ndarray = JET) -> np.ndarray:
    """Values in [0, 1] -> RGB uint8 through a 256-entry look-up table."""
    idx = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)) * 255.0, 0, 255).round().astype(np.intp)
    return lut[idx]


def overlay(image_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heatmap (values in [0, 1]) upsampled to the image, coloured and blended over it."""
    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"Expected an RGB image of shape (H, W, 3). Received: shape={image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]. Received: alpha={alpha}")
    h, w = image.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"Expected a 2-D heatmap. Received: shape={heat.shape}")
    up = np.asarray(Image.fromarray(heat, mode="F").resize((w, h), Image.Resampling.BILINEAR))
    colour = colorize(np.clip(up, 0.0, 1.0), JET).astype(np.float32)
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour
    return np.clip(out.round(), 0, 255).astype(np.uint8)


def top_channels(maps: np.ndarray, n: int = 16) -> list[int]:
    """Indices of the ``n`` channels with the highest mean activation, most active first."""
    m = np.asarray(maps)
    if m.ndim != 3:
        raise ValueError(f"Expected feature maps of shape (h, w, channels). Received: shape={m.shape}")
    mean = m.reshape(-1, m.shape[-1]).mean(axis=0)
    return [int(i) for i in np.argsort(-mean, kind="stable")[: max(1, min(int(n), m.shape[-1]))]]


def channel_grid(maps: np.ndarray, n: int = 16, *, min_tile: int = 48, pad: int = 2) -> np.ndarray:
    """The ``n`` most active channels, each normalised to its own range, coloured and tiled.

    Small maps are enlarged by an integer factor (nearest neighbour, so a 4x4 map shows as 16
    clear cells) to at least ``min_tile`` pixels. Returns an RGB uint8 image.
    """
    m = np.asarray(maps, dtype=np.float32)
    channels = top_channels(m, n)
    h, w = m.shape[:2]
    scale = max(1, math.ceil(min_tile / max(h, w, 1)))
    th, tw = h * scale, w * scale
    cols = math.ceil(math.sqrt(len(channels)))
    rows = math.ceil(len(channels) / cols)
    grid = np.full((rows * th + (rows + 1) * pad, cols * tw + (cols + 1) * pad, 3), 255, np.uint8)
    for k, c in enumerate(channels):
        tile = m[:, :, c]
        lo, hi = float(tile.min()), float(tile.max())
        norm = (tile - lo) / (hi - lo) if hi > lo else np.zeros_like(tile)
        big = np.repeat(np.repeat(norm, scale, axis=0), scale, axis=1)
        r, q = divmod(k, cols)
        y, x = pad + r * (th + pad), pad + q * (tw + pad)
        grid[y : y + th, x : x + tw] = colorize(big, VIRIDIS)
    return grid
