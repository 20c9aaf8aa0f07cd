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
background thread traces it (:class:`core.models.compiling.Compiler`).

Which layers are offered is the backbone registry's knowledge (``BackboneSpec.block_outputs``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.compat import output_layer
from core.models.backbones import build_base, get_backbone, resolve_weights, spec_of_model
from core.models.compiling import Compiler
from core.models.imagenet import IMAGENET_CLASSES, imagenet_class_names

logger = logging.getLogger(__name__)

__all__ = ["Inspection", "Inspector", "conv_layers", "imagenet_inspector"]

MIN_DEFAULT_CELLS = 8  # the default block's map is at least this many cells wide where the image allows


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


def conv_layers(classifier: Any) -> list[str]:
    """The conv-block outputs of ``classifier``'s backbone offered for inspection, input to output.

    Which ones is the registry's (``BackboneSpec.block_outputs``); the last one is the backbone's
    output (the last conv layer), also for a backbone the registry does not know. ``classifier`` may
    also be a bare backbone model.
    """
    import keras

    has_nested = any(isinstance(layer, keras.Model) for layer in classifier.layers)
    backbone = _backbone_of(classifier) if has_nested else classifier
    spec = spec_of_model(backbone)
    offered = spec.block_outputs([layer.name for layer in backbone.layers]) if spec is not None else []
    out_name = _output_layer_name(backbone)
    if out_name not in offered:
        offered.append(out_name)
    return offered


def _output_layer_name(model: Any) -> str:
    layer = output_layer(model.outputs[0])
    return str((layer if layer is not None else model.layers[-1]).name)


# -- the inspector ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inspection:
    """Everything the page shows for one image and one layer, from one pass."""

    layer: str
    maps: np.ndarray  # (h, w, channels) the layer's output
    probs: np.ndarray  # (classes,)
    heatmap: np.ndarray  # (h, w) Grad-CAM in [0, 1]
    class_index: int  # the class Grad-CAM explains
    grads: np.ndarray | None = None  # (h, w, channels) the class score's gradient at the layer (core.explain.heatmaps)


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
        self._subs: dict[tuple[str, str], Any] = {}
        self._compiler = Compiler(lambda key: self._body(*key), self._args, background=background_compile)

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
        if kind == "scores":  # preprocessed (masked, occluded) images -> class probabilities
            return lambda x: self._logits_probs(self._avg_pool(self.backbone(x, training=False)))[1]

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
            return maps[0], probs[0], heat, chosen, grads[0]

        return cam

    def _args(self, key: tuple[str, str]) -> list[Any]:
        import tensorflow as tf

        batch = None if key[0] == "scores" else 1
        spec = [tf.TensorSpec((batch, self.image_size, self.image_size, 3), tf.float32)]
        return spec + [tf.TensorSpec((), tf.int32)] if key[0] == "cam" else spec

    def _call(self, kind: str, layer: str, *args: Any) -> Any:
        return self._compiler.call((kind, layer), *args)

    def wait_compiled(self, timeout: float = 120.0) -> bool:
        """Wait until background compilation is done; True if nothing is left pending."""
        return self._compiler.wait(timeout)

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
        return self._compiler.is_compiled(("cam" if self.has_head else "maps", layer))

    def warm(self, layer: str | None = None) -> None:
        """Compile the function for ``layer`` (default the last conv layer) now, and wait for it."""
        layer = self.check_layer(layer)
        self._compiler.compile(("cam" if self.has_head else "maps", layer))

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
        maps, probs, heat, chosen, grads = self._call("cam", layer, self._batch(image), cls)
        if self.background_compile:
            # Score-CAM and occlusion score 64-100 altered images: eagerly that took 4-6 s on 2 busy cores
            # (a first eager pass, then a wait for the compile it started), compiled 0.2 s. So their function
            # compiles in the background as soon as a first explanation is shown, before anyone asks for it.
            self._compiler.schedule(("scores", ""))
        return Inspection(
            layer=layer,
            maps=np.asarray(maps),
            probs=np.asarray(probs),
            heatmap=np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0),
            class_index=int(chosen),
            grads=np.asarray(grads),
        )

    # -- what explanation methods need (core.explain.heatmaps) --------------------------------------------------
    @property
    def default_layer(self) -> str:
        """The block explanations open on: the registry's middle block (conv4_block5 for DenseNet121: 8x8 at
        128 px) when its map is at least 8 cells wide at this size, else the deepest block that is (at 64 px
        a 4x4 map says little), else the last one."""
        spec = spec_of_model(self.backbone)
        wide = min(MIN_DEFAULT_CELLS, self.layer_shape(self.layers[0])[0])
        preferred = spec.explain_layer if spec is not None else None
        if preferred in self.layers and self.layer_shape(str(preferred))[0] >= wide:
            return str(preferred)
        fine = [name for name in self.layers if self.layer_shape(name)[0] >= wide]
        return fine[-1] if fine else self.last_layer

    def layer_shape(self, layer: str) -> tuple[int, int, int]:
        """(height, width, channels) of ``layer``'s output at this model's image size."""
        shape = self.backbone.get_layer(self.check_layer(layer)).output.shape
        return int(shape[1]), int(shape[2]), int(shape[3])

    def block_name(self, layer: str) -> str:
        """Plain words for ``layer`` ("Block 4, unit 5"), from the registry; the name itself otherwise."""
        spec = spec_of_model(self.backbone)
        return spec.block_name(layer) if spec is not None and spec.block_name is not None else layer

    def prepared(self, image: np.ndarray) -> np.ndarray:
        """One image as the backbone sees it (after the model's own preprocessing): (1, size, size, 3)."""
        x = self._batch(image)
        with self._compiler.keras_lock:
            return np.asarray(self._prep(x), dtype=np.float32)

    def scores(self, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Class probabilities of preprocessed images ``x`` (n, size, size, 3), ``batch_size`` at a time."""
        self._require_head()
        out = [np.asarray(self._call("scores", "", x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)


# -- ImageNet backbone alone ----------------------------------------------------------------------------
def imagenet_inspector(backbone: str, image_size: int, *, background_compile: bool = True) -> Inspector:
    """An Inspector for a backbone with its ImageNet weights and no fine-tuning.

    A backbone with an ImageNet top in the registry (EfficientNet-Lite0) predicts ImageNet classes and
    gives Grad-CAM over them; others (DenseNet121, only when its weights are cached) are a bare backbone
    (feature maps only). Raises :class:`core.errors.WeightsError` with a sentence when the weights cannot
    be had.
    """
    import keras

    spec = get_backbone(backbone)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = spec.preprocess()(inputs)
    if spec.imagenet_top is not None:
        base, top_weights = spec.imagenet_top(image_size)
        features = keras.Input((int(base.outputs[0].shape[-1]),), name="features")
        pred = keras.layers.Dense(IMAGENET_CLASSES, activation="softmax", name="pred")
        head = keras.Model(features, pred(features), name="head")
        pred.set_weights(top_weights)
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base(x, training=False))
        model = keras.Model(inputs, head(pooled), name=f"{backbone}_imagenet")
        return Inspector(model, classes=imagenet_class_names(), background_compile=background_compile)
    base = build_base(backbone, image_size, resolve_weights(backbone, "imagenet"))
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(base(x, training=False))
    model = keras.Model(inputs, pooled, name=f"{backbone}_imagenet_backbone")
    return Inspector(model, background_compile=background_compile)
