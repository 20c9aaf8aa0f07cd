"""Images/s and achieved GFLOP/s of one training step: DenseNet121 full and minus 1-3 blocks.

For each precision (float32, mixed_bfloat16), image size (128, 224) and cut (0-3 blocks removed) the
classifier SceneLab trains in phase ``full`` (BatchNorm frozen, Adam, batch 32) is built with random
weights (speed does not depend on their values), its first step is timed (graph tracing included),
then steady steps for at least ``--min-seconds``. Partial fine-tuning rows (``--freeze``, float32):
the first K blocks frozen and their activations cached, so a step runs only the remaining blocks
and the head (``core.models.model.build_suffix_classifier``), fed cached prefix activations.

FLOPs are counted, not guessed: ``tf.compat.v1.profiler`` sums the registered float-operation counts
of the concrete function of one training step (forward, loss and every gradient, batch 1) and the
figure is scaled by the batch. GFLOP/s is compared with the issue's fp32 peak (2 cores x 2.1 GHz x 64
FLOP/cycle = 269 GFLOP/s) and with a ceiling measured on the same machine on large convolutions and
matrix products (what the CPU reaches, whatever its nominal width).

    python -m bench.train_step [--tiny] [--sizes 128,224] [--cuts 0,1,2,3] [--precisions float32,mixed_bfloat16]
"""

from __future__ import annotations

import time
from typing import Any

from bench import common


def _model(backbone: str, size: int, remove_blocks: int, freeze_blocks: int, classes: int = 8) -> Any:
    """The model a training step runs: the whole classifier, or with ``freeze_blocks`` the suffix
    classifier that trains on cached prefix activations (``core.perf``)."""
    from core.models import model
    from core.models.backbones import ResolvedWeights, get_backbone
    from core.models.model import build_classifier, set_base_trainable

    clf = build_classifier(
        backbone, size, classes, weights=ResolvedWeights("none", None, "none"), remove_blocks=remove_blocks
    )
    set_base_trainable(clf, True)
    layer = get_backbone(backbone).prefix_layer(remove_blocks, freeze_blocks)
    if layer is None:
        return clf.model
    prefix, suffix = model.split_base(clf.base, layer)
    model.freeze_prefix(clf.base, prefix)
    return model.build_suffix_classifier(suffix, clf.head)


def count_step_flops(backbone: str, size: int, remove_blocks: int, freeze_blocks: int = 0) -> dict[str, float]:
    """FLOPs per image of a forward pass and of a training step, from the TF graphs."""
    import keras
    import tensorflow as tf

    from core.compat import convert_variables_to_constants

    policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("float32")
    try:
        model = _model(backbone, size, remove_blocks, freeze_blocks)

        def profile(graph: Any) -> float:
            opts = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
            opts["output"] = "none"
            return float(tf.compat.v1.profiler.profile(graph=graph, options=opts).total_float_ops)

        spec = tf.TensorSpec([1, *(int(d) for d in model.input.shape[1:])], tf.float32)
        forward = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)

        def step(x: Any, y: Any) -> Any:
            with tf.GradientTape() as tape:
                loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
            return tape.gradient(loss, model.trainable_variables)

        grads = tf.function(step).get_concrete_function(spec, tf.TensorSpec([1], tf.int32))
        return {
            "forward": profile(convert_variables_to_constants(forward).graph),
            "train_step": profile(grads.graph),
        }
    finally:
        keras.mixed_precision.set_global_policy(policy)


def measured_ceiling(seconds: float = 1.0) -> dict[str, float]:
    """Best GFLOP/s over a few large convolutions and matrix products, fp32 and bf16 (a practical
    ceiling for this machine: no real network runs faster than its best single operation)."""
    import tensorflow as tf

    shapes = {  # name: (input, kernel) for a conv, (n,) for an n x n matrix product
        "conv3x3_128": ((32, 32, 32, 128), (3, 3, 128, 128)),
        "conv3x3_256": ((32, 28, 28, 256), (3, 3, 256, 256)),
        "conv1x1_512": ((32, 28, 28, 512), (1, 1, 512, 128)),
        "matmul_2048": (2048,),
        "matmul_4096": (4096,),
    }
    out: dict[str, float] = {}
    for dtype in (tf.float32, tf.bfloat16):
        best = 0.0
        for shape in shapes.values():
            if len(shape) == 1:
                a = tf.cast(tf.random.normal([shape[0], shape[0]]), dtype)
                fn = tf.function(lambda a=a: tf.matmul(a, a))
                flops = 2 * shape[0] ** 3
            else:
                x = tf.cast(tf.random.normal(shape[0]), dtype)
                w = tf.cast(tf.random.normal(shape[1]), dtype)
                fn = tf.function(lambda x=x, w=w: tf.nn.conv2d(x, w, 1, "SAME"))
                n, h, wd, _ = shape[0]
                kh, kw, cin, cout = shape[1]
                flops = 2 * n * h * wd * kh * kw * cin * cout
            fn()
            runs, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                fn().numpy()
                runs += 1
            best = max(best, flops * runs / (time.perf_counter() - t0) / 1e9)
        out[dtype.name] = round(best, 1)
    return out


def time_steps(
    backbone: str,
    size: int,
    remove_blocks: int,
    batch: int,
    min_seconds: float,
    min_steps: int,
    log: list[Any],
    label: str,
    freeze_blocks: int = 0,
) -> dict[str, float]:
    """First-step seconds and steady images/s of a training step (BatchNorm frozen, Adam)."""
    import keras
    import numpy as np

    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    model = _model(backbone, size, remove_blocks, freeze_blocks)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    shape = tuple(int(d) for d in model.input.shape[1:])
    x = (rng.integers(0, 256, (batch, *shape)) if freeze_blocks == 0 else rng.random((batch, *shape))).astype("float32")
    y = rng.integers(0, 8, batch).astype("int32")
    t0 = time.perf_counter()
    model.train_on_batch(x, y)
    first = time.perf_counter() - t0
    model.train_on_batch(x, y)
    steps = 0
    with common.measured(log, label) as m:
        start = time.perf_counter()
        while steps < min_steps or time.perf_counter() - start < min_seconds:
            model.train_on_batch(x, y)
            steps += 1
    return {
        "build_s": round(build_s, 2),
        "first_step_s": round(first, 2),
        "images_per_s": common.rate(steps * batch, m["seconds"]),
        "steps": steps,
        "others_cores": m["others_cores"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="128,224")
    p.add_argument("--cuts", default="0,1,2,3", help="blocks removed")
    p.add_argument("--precisions", default="float32,mixed_bfloat16")
    p.add_argument(
        "--freeze", default="1,2,3", help="partial fine-tuning rows (float32, no block removed): blocks frozen"
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--min-seconds", type=float, default=8.0)
    p.add_argument("--min-steps", type=int, default=3)
    p.add_argument("--intra", type=int, default=None, help="intra-op threads (default: TensorFlow's)")
    p.add_argument("--inter", type=int, default=None, help="inter-op threads (default: TensorFlow's)")
    args = p.parse_args(argv)
    common.quiet()
    from core.runtime import configure_threads

    threads = configure_threads(args.intra, args.inter)
    import keras

    if args.tiny:
        sizes, cuts, batch, min_s, min_steps = [32], [3], 4, 0.2, 1
    else:
        sizes = [int(s) for s in args.sizes.split(",")]
        cuts = [int(c) for c in args.cuts.split(",")]
        batch, min_s, min_steps = args.batch, args.min_seconds, args.min_steps
    precisions = args.precisions.split(",")
    freezes = [] if args.tiny else [int(k) for k in args.freeze.split(",") if k]
    seen = common.wait_for_quiet(args.quiet_wait)
    ceiling = measured_ceiling(0.2 if args.tiny else 2.0)
    ceiling_fp32 = ceiling["float32"]
    log: list[dict[str, Any]] = []
    flops = {(s, c, 0): count_step_flops("densenet121", s, c) for s in sizes for c in cuts}
    flops.update({(s, 0, k): count_step_flops("densenet121", s, 0, k) for s in sizes for k in freezes})
    variants = [(p_, s, c, 0) for p_ in precisions for s in sizes for c in cuts]
    variants += [("float32", s, 0, k) for s in sizes for k in freezes]
    results, rows = [], []
    for precision, size, cut, freeze in variants:
        keras.mixed_precision.set_global_policy(precision)
        what = f"frozen {freeze} (cached prefix)" if freeze else f"-{cut}"
        r = time_steps("densenet121", size, cut, batch, min_s, min_steps, log, f"{precision} {size} {what}", freeze)
        f = flops[(size, cut, freeze)]
        gflops = r["images_per_s"] * f["train_step"] / 1e9
        r.update(
            {
                "precision": precision,
                "image_size": size,
                "remove_blocks": cut,
                "freeze_blocks": freeze,
                "train_gflop_per_image": round(f["train_step"] / 1e9, 3),
                "forward_gflop_per_image": round(f["forward"] / 1e9, 3),
                "achieved_gflops": round(gflops, 1),
                "fraction_of_nominal_peak": round(gflops / common.NOMINAL_PEAK_GFLOPS, 3),
                "fraction_of_measured_fp32_ceiling": round(gflops / ceiling_fp32, 3),
            }
        )
        results.append(r)
        rows.append(
            (
                precision,
                size,
                what,
                r["images_per_s"],
                r["first_step_s"],
                r["train_gflop_per_image"],
                r["achieved_gflops"],
                f"{100 * r['fraction_of_nominal_peak']:.0f}%",
                f"{100 * r['fraction_of_measured_fp32_ceiling']:.0f}%",
                r["others_cores"],
            )
        )
    keras.mixed_precision.set_global_policy("float32")
    whole = [r for r in results if not r["freeze_blocks"]]
    best = max(whole, key=lambda r: r["achieved_gflops"])
    best_fp32 = max(
        (r for r in results if r["precision"] == "float32"), key=lambda r: r["achieved_gflops"], default=None
    )
    figures = {
        "dataset": "random images (speed does not depend on pixel values)",
        "backbone": "densenet121 (weights none)",
        "batch_size": batch,
        "threads": threads,
        "nominal_fp32_peak_gflops": common.NOMINAL_PEAK_GFLOPS,
        "measured_ceiling_gflops": ceiling,
        "results": results,
        "best": {
            k: best[k]
            for k in (
                "precision",
                "image_size",
                "remove_blocks",
                "images_per_s",
                "achieved_gflops",
                "fraction_of_nominal_peak",
            )
        },
        "best_fp32_fraction_of_nominal_peak": best_fp32["fraction_of_nominal_peak"] if best_fp32 else None,
        "target_fraction": 0.4,
        "others_cores_before": seen,
    }
    return common.emit(
        "train_step",
        figures,
        (
            "precision",
            "size",
            "blocks",
            "img/s",
            "1st step s",
            "GFLOP/img",
            "GFLOP/s",
            "of 269",
            "of measured",
            "others",
        ),
        rows,
        log,
        args.tiny,
    )


if __name__ == "__main__":
    main()
