"""Images/s of the training input pipeline with the study's augmentations, SceneLab against the study.

* study: ``ImageDataGenerator(rotation_range=20, width/height_shift_range=0.2, shear_range=0.2,
  zoom_range=0.2, horizontal_flip=True).flow_from_directory(train, target_size, batch_size=32)`` —
  Keras 3 keeps it as ``keras.src.legacy.preprocessing.image.ImageDataGenerator`` (the public
  ``keras.preprocessing.image`` alias is gone); it reads and decodes every JPEG each epoch and
  transforms image by image with SciPy.
* SceneLab: ``core.data.arrays.make_tf_dataset`` over the decoded uint8 cache with
  ``core.data.augment.build_augmenter`` (the same transforms on whole batches, in tf.data).

Both are drained alone (no model), after two warm-up batches, at each image size. The one-time cost
SceneLab pays first (decoding every image into the uint8 cache) is printed too.

    python -m bench.pipeline [--tiny] [--sizes 128,224] [--batches 40]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

STUDY_AUG = {
    "rotation": 20.0,
    "width_shift": 0.2,
    "height_shift": 0.2,
    "shear": 0.2,
    "zoom": 0.2,
    "hflip": True,
}


def study_iterator(root: Path, size: int, batch: int, seed: int) -> Any:
    from core.compat import image_data_generator

    ImageDataGenerator = image_data_generator()  # noqa: N806 - the study's class

    gen = ImageDataGenerator(
        rotation_range=20,
        width_shift_range=0.2,
        height_shift_range=0.2,
        shear_range=0.2,  # degrees in ImageDataGenerator; the cost does not depend on the angle
        zoom_range=0.2,
        horizontal_flip=True,
        fill_mode="nearest",
    )
    return gen.flow_from_directory(
        str(root / "train"), target_size=(size, size), batch_size=batch, class_mode="sparse", shuffle=True, seed=seed
    )


def keras_chain(seed: int) -> Any:
    """The augmenter SceneLab used before ``core.data.augment.RandomAffine``: one Keras layer per transform."""
    import keras

    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(20 / 360, fill_mode="nearest", seed=seed + 1),
            keras.layers.RandomTranslation(0.2, 0.2, fill_mode="nearest", seed=seed + 2),
            keras.layers.RandomShear(0.2, 0.2, fill_mode="nearest", seed=seed + 3),
            keras.layers.RandomZoom(0.2, 0.2, fill_mode="nearest", seed=seed + 4),
        ]
    )


def scenelab_iterator(x: Any, y: Any, batch: int, seed: int, variant: str = "scenelab") -> Any:
    """``scenelab``: make_tf_dataset + build_augmenter as training uses them; ``keras_chain``: the same
    with the former chain of Keras layers; ``parallel``: the augmentation map run with parallel calls, as
    SceneLab did before (faster or not, it made augmented runs irreproducible: the calls race on the
    augmenter's random state)."""
    import tensorflow as tf

    from core.config import AugmentConfig
    from core.data.arrays import make_tf_dataset
    from core.data.augment import build_augmenter

    aug = keras_chain(seed) if variant == "keras_chain" else build_augmenter(AugmentConfig(**STUDY_AUG), seed)
    if variant != "parallel":
        return iter(make_tf_dataset(x, y, batch, shuffle=True, seed=seed, augment=aug).repeat())
    ds = tf.data.Dataset.from_tensor_slices((x, y)).cache().shuffle(len(x), seed=seed).batch(batch)
    ds = ds.map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.map(lambda a, b: (aug(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)  # type: ignore[operator]
    return iter(ds.prefetch(tf.data.AUTOTUNE).repeat())


def drain(it: Any, batches: int, min_seconds: float, log: list[dict[str, Any]], label: str) -> dict[str, float]:
    """Time at least ``batches`` batches and ``min_seconds`` (so a prefetch buffer filled before the
    clock started weighs little), after two warm-up ones; return images/s and the first batch's seconds."""
    t0 = time.perf_counter()
    next(it)
    first = time.perf_counter() - t0
    next(it)
    n = done = 0
    with common.measured(log, label) as m:
        start = time.perf_counter()
        while done < batches or time.perf_counter() - start < min_seconds:
            xb = next(it)[0]
            n += int(xb.shape[0])
            done += 1
    return {"images_per_s": common.rate(n, m["seconds"]), "first_batch_s": round(first, 3), "images": n}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", default="128,224", help="image sizes, comma-separated")
    p.add_argument("--batches", type=int, default=40, help="timed batches of 32 per pipeline and size (at least)")
    p.add_argument("--min-seconds", type=float, default=5.0, help="time each pipeline for at least this long")
    args = p.parse_args(argv)
    common.quiet()
    from core.data.arrays import decode_dataset, scan_dataset

    sizes = [32] if args.tiny else [int(s) for s in args.sizes.split(",")]
    batches = 3 if args.tiny else args.batches
    batch = 8 if args.tiny else 32
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        root = common.resolve_data(args, Path(tmp))
        seen = common.wait_for_quiet(args.quiet_wait)
        info = scan_dataset(root)
        log: list[dict[str, Any]] = []
        rows, results = [], {}
        for size in sizes:
            with common.measured(log, f"decode {size}") as dec:
                ds = decode_dataset(info, size, Path(tmp) / "cache")
            secs = 0.2 if args.tiny else args.min_seconds
            study = drain(study_iterator(root, size, batch, 0), batches, secs, log, f"study {size}")
            ours = drain(scenelab_iterator(ds.x_train, ds.y_train, batch, 0), batches, secs, log, f"scenelab {size}")
            chain = drain(
                scenelab_iterator(ds.x_train, ds.y_train, batch, 0, "keras_chain"), batches, secs, log, f"chain {size}"
            )
            par = drain(
                scenelab_iterator(ds.x_train, ds.y_train, batch, 0, "parallel"), batches, secs, log, f"par {size}"
            )
            ratio = round(ours["images_per_s"] / study["images_per_s"], 2)
            results[str(size)] = {
                "study_images_per_s": study["images_per_s"],
                "scenelab_images_per_s": ours["images_per_s"],
                "ratio": ratio,
                "keras_chain_images_per_s": chain["images_per_s"],
                "keras_chain_ratio": round(chain["images_per_s"] / study["images_per_s"], 2),
                "parallel_images_per_s": par["images_per_s"],
                "parallel_ratio": round(par["images_per_s"] / study["images_per_s"], 2),
                "study_first_batch_s": study["first_batch_s"],
                "scenelab_first_batch_s": ours["first_batch_s"],
                "scenelab_decode_once_s": dec["seconds"],
            }
            sp = study["images_per_s"]
            rows.append((size, "study: ImageDataGenerator.flow_from_directory", sp, study["first_batch_s"], "", "1x"))
            rows.append(
                (
                    size,
                    "SceneLab: tf.data + RandomAffine (XLA)",
                    ours["images_per_s"],
                    ours["first_batch_s"],
                    dec["seconds"],
                    f"{ratio}x",
                )
            )
            rows.append(
                (
                    size,
                    "  same, augment map in parallel (former)",
                    par["images_per_s"],
                    par["first_batch_s"],
                    "",
                    f"{par['images_per_s'] / sp:.2f}x",
                )
            )
            rows.append(
                (
                    size,
                    "  before: chained Keras layers",
                    chain["images_per_s"],
                    chain["first_batch_s"],
                    "",
                    f"{chain['images_per_s'] / sp:.2f}x",
                )
            )
        figures = {
            "dataset": common.dataset_label(root),
            "images": len(info.files["train"]),
            "batch_size": batch,
            "augmentation": STUDY_AUG,
            "sizes": results,
            "ratio": min(r["ratio"] for r in results.values()),
            "target_ratio": 3.0,
            "others_cores_before": seen,
        }
        return common.emit(
            "pipeline",
            figures,
            ("size", "pipeline", "img/s", "1st batch s", "decode once s", "ratio"),
            rows,
            log,
            args.tiny,
        )


if __name__ == "__main__":
    main()
