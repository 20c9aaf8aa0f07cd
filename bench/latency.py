"""The app's interactive latencies, measured through ``core`` the way the pages call it.

In one process (the app is one long-lived process), on a fresh artifacts folder:

1. a head run is trained once (EfficientNet-Lite0, ImageNet weights; this also caches the decoded
   images and the pooled features), then **showing that cached run** is timed:
   ``core.training.train.find_run`` + ``Store.load_run``;
2. **retraining a head on cached features** (another learning rate and dropout: a new run), first in
   this process and then again with its compiled model warm;
3. **redrawing an augmentation preview**: ``core.data.augment.preview`` on 8 images at 128 px (first call,
   then a redraw with another seed);
4. **activation maps and Grad-CAM** for one image with ``core.explain.activations.Inspector`` on the trained
   classifier: cold (first call on a fresh Inspector; it answers eagerly while it traces in the
   background) and warm (traced);
5. **explanations** (``core.explain.heatmaps``) of one test image at the default block, warm: Grad-CAM, Grad-CAM++,
   Score-CAM and occlusion, by the run and by the ImageNet backbone (1000 classes), and the page's
   before/after comparison; **projections** (``core.explain.projection``) of every image with the features cached:
   cold (not projected before) and cached, PCA and t-SNE, for the backbone and for the run;
6. **the first training step of an architecture already used**: DenseNet121 (random weights, speed
   does not depend on them) phase ``full`` at ``--step-size`` px, trained twice with different
   learning rates, with the warm-model cache on and, side by side, off (``core.models.warm.WARM``); the
   figure is the time from ``train()`` to the end of the first batch.

    python -m bench.latency [--tiny] [--image-size 128] [--step-size 224] [--only explain]
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import common

TARGETS = {
    "show_cached_run_s": 1.0,
    "head_retrain_warm_s": 5.0,
    "preview_redraw_s": 0.5,
    "feature_maps_warm_s": 0.3,
    "repeat_arch_first_step_s": 15.0,
    "gradcam_warm_s": 0.3,
    "gradcampp_warm_s": 0.3,
    "scorecam_warm_s": 3.0,
    "occlusion_warm_s": 3.0,
    "projection_cold_s": 10.0,
    "projection_cached_s": 0.5,
}
EXPLAIN_TARGETS = ("gradcam_warm_s", "gradcampp_warm_s", "scorecam_warm_s", "occlusion_warm_s", "projection_cold_s",
                   "projection_cached_s")  # fmt: skip


def first_step_seconds(cfg: Any, data: Path, store: Any) -> tuple[float, Any]:
    """Seconds from calling ``train`` to the end of the first training batch, and the result."""
    from core.training.train import train

    t0 = time.perf_counter()
    marks: list[float] = []

    def progress(event: dict[str, Any]) -> None:
        if event.get("event") == "batch" and not marks:
            marks.append(time.perf_counter() - t0)

    result = train(cfg, data, store, progress=progress)
    return (marks[0] if marks else float("nan")), result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, default=128, help="Lite0 head runs, preview and activations")
    p.add_argument("--step-size", type=int, default=224, help="DenseNet121 first-step runs")
    p.add_argument("--head-epochs", type=int, default=30)
    p.add_argument("--only", choices=("all", "explain"), default="all", help="explain: the head run, then rows 4-5")
    args = p.parse_args(argv)
    common.quiet()

    from core.config import RunConfig
    from core.data.arrays import decode_dataset, scan_dataset
    from core.store.folders import Store
    from core.training.runs import load_classifier
    from core.training.train import find_run, train

    size = 32 if args.tiny else args.image_size
    step_size = 32 if args.tiny else args.step_size
    epochs = 1 if args.tiny else args.head_epochs
    log: list[dict[str, Any]] = []
    fig: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        data = common.resolve_data(args, Path(tmp))
        seen = common.wait_for_quiet(args.quiet_wait)
        store = Store(Path(tmp) / "artifacts")
        head = RunConfig(
            backbone="efficientnet_lite0", weights="imagenet", phase="head", image_size=size, epochs=epochs, dropout=0.2
        )

        # 1. a head run, then showing it from the cache
        with common.measured(log, "first head run (decode + features + head)") as m:
            first = train(head, data, store)
        fig["first_head_run_s"] = m["seconds"]
        with common.measured(log, "show cached run") as m:
            record = find_run(head, data, store)
            assert record is not None
            store.load_run(record.run_id)
        fig["show_cached_run_s"] = m["seconds"]

        if args.only == "all":
            fig.update(retrain_and_preview(head, first, data, store, epochs, args.tiny, log))
        ds = decode_dataset(scan_dataset(data), size, store.datasets_dir)

        # 4. activation maps and Grad-CAM on the trained classifier
        fig.update(activations(first.record, load_classifier, ds, log))
        # 5. explanations and projections
        fig.update(explanations(first.record, ds.x_test[0], log))
        fig.update(projections(first.record, data, store, log))
        if args.only == "all":
            fig.update(first_steps(Path(tmp), step_size, args.tiny, log))

    rows = [(k, fig.get(k), TARGETS.get(k, "")) for k in fig if k.endswith("_s") and not k.endswith("per_s")]
    rows += [(k, fig.get(k), "") for k in fig if k.endswith("_images_per_s")]
    figures = {
        "dataset": common.dataset_label(data),
        "head_runs": f"efficientnet_lite0 (ImageNet) at {size} px, {epochs} epochs",
        "first_step_runs_model": f"densenet121{' minus 3 blocks' if args.tiny else ''} (weights none) phase full at {step_size} px, first batch of 32 (generated images)",
        "preview": "8 images at 128 px, the study's augmentations",
        **fig,
        "targets": TARGETS,
        "met": {k: fig[k] <= v for k, v in TARGETS.items() if fig.get(k) is not None},
        "others_cores_before": seen,
    }
    return common.emit("latency", figures, ("latency", "seconds (or images/s)", "target s"), rows, log, args.tiny)


def retrain_and_preview(head: Any, first: Any, data: Path, store: Any, epochs: int, tiny: bool,
                        log: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    """Rows 2 and 3: retraining a head on cached features; the augmentation preview."""
    import numpy as np

    from core.config import AugmentConfig
    from core.data.arrays import decode_dataset, scan_dataset
    from core.data.augment import preview
    from core.training.train import train

    fig: dict[str, Any] = {}
    # 2. retrain a head on cached features: first in this process is already warm for the
    # architecture of run 1, so time a new architecture (other dropout) cold, then warm
    with common.measured(log, "head retrain, new head shape (cold)") as m:
        train(head.replace(dropout=0.4, lr=3e-3), data, store)
    fig["head_retrain_cold_s"] = m["seconds"]
    with common.measured(log, "head retrain, same shape (warm)") as m:
        warm_run = train(head.replace(dropout=0.4, lr=1e-3), data, store)
    fig["head_retrain_warm_s"] = m["seconds"]
    fig["head_retrain_warm_model"] = warm_run.record.metrics.get("warm_model")

    # 2b. where the head retrain's speed comes from: the former fit (NumPy arrays, one step per
    # call, a new head compiled each time) against the current one (tf.data, 64 steps per call)
    fig.update(head_fit_comparison(store, head, first.record.metrics["n_train"], epochs, log))
    # 2c. the feature pass: eager Keras calls (former) against one traced function (core.perf)
    fig.update(feature_pass_comparison(head, data, store, 64 if tiny else 256, log))

    # 3. augmentation preview on 8 images at 128 px
    ds = decode_dataset(scan_dataset(data), 32 if tiny else 128, store.datasets_dir)
    images = ds.x_train[:: max(1, len(ds.x_train) // 8)][:8]
    aug = AugmentConfig(rotation=20, width_shift=0.2, height_shift=0.2, shear=0.2, zoom=0.2, hflip=True)
    with common.measured(log, "preview, first") as m:
        preview(images, aug, seed=0)
    fig["preview_first_s"] = m["seconds"]
    redraws = []
    for seed in (1, 2, 3):
        with common.measured(log, "preview, redraw") as m:
            preview(images, dataclasses.replace(aug, zoom=0.1 * seed), seed=seed)
        redraws.append(m["seconds"])
    fig["preview_redraw_s"] = round(float(np.median(redraws)), 3)

    return fig


def first_steps(tmp: Path, step_size: int, tiny: bool, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Row 6: the first training step of an architecture already used, warm-model cache on and off."""
    from core.config import RunConfig
    from core.models import warm
    from core.store.folders import Store

    fig: dict[str, Any] = {}
    # 5. first training step of an architecture already used, warm cache on vs off; on a small
    # generated dataset (the first step depends on shapes only; evaluating 807 test images
    # through DenseNet121 four times would only lengthen the benchmark)
    step_data = common.tiny_dataset(tmp / "step-data", n_train=14, n_test=2, size=64)
    full = RunConfig(
        backbone="densenet121",
        weights="none",
        remove_blocks=3 if tiny else 0,
        phase="full",
        image_size=step_size,
        epochs=1,
        lr=1e-4,
    )
    steps: dict[str, list[float]] = {}
    for mode in ("off", "on"):
        warm.WARM.clear()
        warm.WARM.max_entries = 0 if mode == "off" else warm.DEFAULT_WARM_ENTRIES
        runs = []
        for i, lr in enumerate((1e-4, 2e-4)):
            mstore = Store(tmp / f"step-{mode}")
            with common.measured(log, f"densenet first step, warm cache {mode}, run {i + 1}"):
                secs, _ = first_step_seconds(full.replace(lr=lr), step_data, mstore)
            runs.append(round(secs, 2))
        steps[mode] = runs
    warm.WARM.max_entries = warm.DEFAULT_WARM_ENTRIES
    fig["first_step_new_arch_s"] = steps["on"][0]
    fig["repeat_arch_first_step_s"] = steps["on"][1]
    fig["repeat_arch_first_step_no_warm_cache_s"] = steps["off"][1]
    fig["first_step_runs"] = steps

    return fig


def head_fit_comparison(store: Any, cfg: Any, n_train: int, epochs: int, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds to fit a head for ``epochs`` on the cached features, former path vs current path."""
    import keras
    import numpy as np

    from core.models.model import build_head
    from core.store.atomic import load_npz
    from core.training import features
    from core.training.fit import HEAD_STEPS_PER_EXECUTION

    (path,) = sorted(store.features_dir.glob("[0-9a-f]*.npz"))[:1]
    feats = load_npz(path)
    assert feats is not None
    x = feats["train"][:n_train]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, len(x)).astype("int32")
    xv, yv = feats["train"][n_train:], rng.integers(0, 8, len(feats["train"]) - n_train).astype("int32")
    out: dict[str, Any] = {}

    def fresh(spe: int) -> Any:
        keras.utils.set_random_seed(0)
        head = build_head(x.shape[1], 8, dropout=cfg.dropout)
        head.compile(
            optimizer=keras.optimizers.Adam(cfg.lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=spe,
        )
        return head

    def fit(head: Any) -> None:
        head.fit(x, y, validation_data=(xv, yv), batch_size=32, epochs=epochs, shuffle=True, verbose=0)

    with common.measured(log, "head fit, former (1 step per call, new head)") as m:
        fit(fresh(1))
    out["head_fit_former_s"] = m["seconds"]
    head = fresh(HEAD_STEPS_PER_EXECUTION)
    with common.measured(log, "head fit, current (64 steps per call), first") as m:
        fit(head)
    out["head_fit_current_first_s"] = m["seconds"]
    with common.measured(log, "head fit, current, warm") as m:
        fit(head)
    out["head_fit_current_warm_s"] = m["seconds"]
    # not used by core.training.train (a tf.data shuffle changes the order of batches, so results would differ
    # from Keras' NumPy shuffle that every stored run used): what it would gain
    train_ds = features.array_dataset(x, y, 32, shuffle=True)
    val_ds = features.array_dataset(xv, yv, 32)
    head.fit(train_ds, validation_data=val_ds, epochs=1, verbose=0)
    with common.measured(log, "head fit, tf.data input, warm (not used)") as m:
        head.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=0)
    out["head_fit_tfdata_warm_s"] = m["seconds"]
    return out


def feature_pass_comparison(cfg: Any, data: Path, store: Any, n: int, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Images/s of the pooled-feature pass: eager Keras calls (former) vs ``core.training.features.FeatureFn``."""
    import numpy as np

    from core.data.arrays import decode_dataset, scan_dataset
    from core.models.backbones import resolve_weights
    from core.models.model import build_classifier
    from core.training import features

    ds = decode_dataset(scan_dataset(data), cfg.image_size, store.datasets_dir)
    x = np.resize(ds.x_train, (n, *ds.x_train.shape[1:]))
    clf = build_classifier(cfg.backbone, cfg.image_size, 8, weights=resolve_weights(cfg.backbone, cfg.weights))
    out: dict[str, Any] = {}
    with common.measured(log, "feature pass, eager (former)") as m:
        for start in range(0, n, 64):
            np.asarray(clf.features(x[start : start + 64].astype("float32"), training=False))
    out["feature_pass_eager_images_per_s"] = common.rate(n, m["seconds"])
    fn = features.FeatureFn(clf.features)
    with common.measured(log, "feature pass, traced (current), first") as m:
        fn.map(x, 64)
    out["feature_pass_traced_first_images_per_s"] = common.rate(n, m["seconds"])
    with common.measured(log, "feature pass, traced (current), warm") as m:
        fn.map(x, 64)
    out["feature_pass_traced_images_per_s"] = common.rate(n, m["seconds"])
    return out


def activations(record: Any, load_classifier: Any, ds: Any, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Feature maps and Grad-CAM, cold and warm, through core.explain.activations.Inspector."""
    import numpy as np

    out: dict[str, Any] = {}
    with common.measured(log, "load classifier of a run") as m:
        model = load_classifier(record)
    out["load_classifier_s"] = m["seconds"]
    image = ds.x_test[0] if ds.image_size == int(model.inputs[0].shape[1]) else None
    if image is None:  # the run's size differs from the preview's: decode at the run's size
        from PIL import Image

        size = int(model.inputs[0].shape[1])
        image = np.asarray(Image.fromarray(ds.x_test[0]).resize((size, size)))
    from core.explain.activations import Inspector

    insp = Inspector(model)
    with common.measured(log, "feature maps, cold Inspector") as m:
        insp.feature_maps(image)
    out["feature_maps_cold_s"] = m["seconds"]
    with common.measured(log, "grad-cam, cold") as m:
        insp.grad_cam(image)
    out["grad_cam_cold_s"] = m["seconds"]
    with common.measured(log, "wait for background trace") as m:
        insp.wait_compiled()
    out["activations_trace_s"] = m["seconds"]
    times_maps, times_cam = [], []
    for _ in range(3):
        with common.measured(log, "feature maps, warm") as m:
            insp.feature_maps(image)
        times_maps.append(m["seconds"])
        with common.measured(log, "grad-cam, warm") as m:
            insp.grad_cam(image)
        times_cam.append(m["seconds"])
    out["feature_maps_warm_s"] = round(float(np.median(times_maps)), 3)
    out["grad_cam_warm_s"] = round(float(np.median(times_cam)), 3)
    out["activations_via"] = "core.explain.activations.Inspector (default background compile)"
    return out



def explanations(record: Any, image: Any, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Each method of core.explain.heatmaps on one test image at the default block, first (compiles) and warm (median of
    3), by the run and by the ImageNet backbone; the page's before/after comparison, warm."""
    import numpy as np

    from core.explain.activations import Inspector, imagenet_inspector
    from core.explain.heatmaps import METHODS, compare, explain
    from core.training.runs import load_classifier

    run = Inspector(load_classifier(record), classes=record.config["dataset"]["classes"], background_compile=False)
    size = run.image_size
    before = imagenet_inspector(record.config["run"]["backbone"], size, background_compile=False)
    out: dict[str, Any] = {"explain_block": f"{run.block_name(run.default_layer)} ({run.default_layer}, "
                           f"{'x'.join(map(str, run.layer_shape(run.default_layer)[:2]))})"}  # fmt: skip
    for who, inspector in (("", run), ("_imagenet", before)):
        for method in METHODS:
            key = method.replace("+", "p")
            with common.measured(log, f"{METHODS[method]}{who}, first") as m:
                explain(inspector, image, method=method)
            out[f"{key}{who}_first_s"] = m["seconds"]
            times = []
            for _ in range(3):
                with common.measured(log, f"{METHODS[method]}{who}, warm") as m:
                    explain(inspector, image, method=method)
                times.append(m["seconds"])
            out[f"{key}{who}_warm_s"] = round(float(np.median(times)), 3)
    with common.measured(log, "before/after comparison (Grad-CAM), warm") as m:
        compare(before, run, image, method="gradcam")
    out["compare_gradcam_warm_s"] = m["seconds"]
    return out


def projections(record: Any, data: Path, store: Any, log: list[dict[str, Any]]) -> dict[str, Any]:
    """Every image projected to 2-D with its features cached (the head run cached them): the first time
    (nothing projected yet) and again (read from the projection cache), PCA and t-SNE, backbone and run."""
    import sklearn.manifold  # noqa: F401  (imported once per app process; not part of a projection's time)

    from core.explain.projection import project

    cfg = record.config["run"]
    kw = {"backbone": cfg["backbone"], "weights": cfg["weights"], "image_size": cfg["image_size"], "store": store}
    out: dict[str, Any] = {}
    for method in ("pca", "tsne"):
        for who, run in (("", None), ("_run", record)):
            with common.measured(log, f"projection {method}{who}, cold") as m:
                p = project(data, run=run, method=method, **kw)
            assert not p.cached
            out[f"projection_{method}{who}_cold_s"] = m["seconds"]
            with common.measured(log, f"projection {method}{who}, cached") as m:
                p = project(data, run=run, method=method, **kw)
            assert p.cached
            out[f"projection_{method}{who}_cached_s"] = m["seconds"]
    out["projection_images"] = int(len(p.label))
    out["projection_cold_s"] = max(out["projection_pca_cold_s"], out["projection_tsne_cold_s"])
    out["projection_cached_s"] = max(out["projection_pca_cached_s"], out["projection_tsne_cached_s"])
    return out


if __name__ == "__main__":
    main()
