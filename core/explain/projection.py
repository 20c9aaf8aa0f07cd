"""The dataset as a map: every image's pooled features projected to 2-D (PCA, t-SNE or UMAP).

What is projected:

* **a backbone** (ImageNet weights, not fine-tuned): its pooled features, the very cache head runs train
  on (``core.training.features``, same key), computed and cached here when no run has made it yet;
* **a run whose backbone was fine-tuned**: the pooled features of its fine-tuned backbone (computed once,
  cached as ``features/run-<run_id>.npz``);
* **a head-only run**: its backbone is the ImageNet one, unchanged, so its pooled features are the
  backbone's; what it learned is its head, so its map projects the head's class scores (before softmax).

A run's map also carries its predicted class for every image (test images: the stored predictions that
its test accuracy counts), so test mistakes can be marked. Projections are cached like runs: under
``projections/<key>.npz``, keyed by a hash of everything they depend on (features key, run, what is
projected, method, seed), so a second look reads one small file. t-SNE is scikit-learn's (Barnes-Hut, on
the 50 first principal components, PCA initialisation); UMAP needs the optional ``umap-learn`` package.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.config import RunConfig, stable_hash
from core.data.arrays import DECODE_FORMAT_VERSION, DatasetInfo, decode_dataset, scan_dataset
from core.errors import ConfigError, SceneLabError
from core.explain.methods import PROJECTION_METHODS
from core.models.backbones import ResolvedWeights, resolve_weights
from core.models.model import classifier_for, head_for
from core.store.atomic import atomic_write_bytes, atomic_write_npz, load_npz
from core.store.folders import RunRecord, Store
from core.training.ensemble import explained_record
from core.training.features import FeatureFn, compute_features, features_key
from core.training.runs import load_classifier

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "Projection", "project", "project_pair", "reduce", "write_csv"]

METHODS = PROJECTION_METHODS
PROJECTION_FORMAT = 3  # bump when a method's settings change: cached maps then recompute
# t-SNE of the 2688 images of mit_split_64 (50 principal components of 1280 features) on 2 shared cores, CPU
# seconds: scikit-learn's defaults (perplexity 30, angle 0.5, 1000 iterations) about 45; perplexity 20, angle
# 0.8, 500 iterations 15-17; perplexity 15, angle 0.8, 400 iterations 6.7 (5.4 s of wall time). The classes
# are as well kept in 2-D by all three (a 10-nearest-neighbour classifier on the map: 0.87 of images right).
# UMAP (umap-learn 0.5.12, numba) took 21-25 s on the same data, and openTSNE was slower than scikit-learn.
TSNE_ITERATIONS = 400  # 250 with early exaggeration, then 150 from a PCA start
TSNE_PERPLEXITY = 15.0
TSNE_ANGLE = 0.8  # Barnes-Hut's accuracy/speed trade-off (0.5 is finer and slower)
PCA_DIMS = 50  # t-SNE and UMAP start from this many principal components


@dataclass
class Projection:
    """One 2-D map of a dataset: a row per image (train then test)."""

    xy: np.ndarray  # (n, 2)
    label: np.ndarray  # (n,) true class index
    split: np.ndarray  # (n,) "train" or "test"
    path: np.ndarray  # (n,) path relative to the dataset root
    predicted: np.ndarray  # (n,) the run's predicted class index, -1 without a run
    classes: list[str]
    method: str
    space: str  # what was projected, in words
    model: str  # whose it is, in words
    key: str
    cached: bool = False
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def mistakes(self) -> np.ndarray:
        """True for each test image the run got wrong."""
        return (self.split == "test") & (self.predicted >= 0) & (self.predicted != self.label)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per image: x, y, class, split, predicted class ("" without a run), path."""
        names = [*self.classes, ""]
        return [
            {"x": round(float(x), 4), "y": round(float(y), 4), "class": self.classes[int(lab)], "split": str(sp),
             "predicted": names[int(pr)] if pr >= 0 else "", "path": str(p)}
            for (x, y), lab, sp, pr, p in zip(self.xy, self.label, self.split, self.predicted, self.path, strict=True)
        ]  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "method": self.method, "space": self.space, "model": self.model, "rows": len(self.label),
            "train": int((self.split == "train").sum()), "test": int((self.split == "test").sum()),
            "test_mistakes": int(self.mistakes.sum()), "classes": self.classes, "key": self.key,
            "cached": self.cached, "seconds": round(self.seconds, 3), **self.meta,
        }  # fmt: skip


@dataclass(frozen=True)
class _Source:
    """What is projected and the key of its features cache."""

    cfg: RunConfig
    weights: ResolvedWeights
    features: str  # features cache file stem
    space: str
    model: str
    run: RunRecord | None
    scores: bool  # the run's head's class scores rather than its features


def _source(info: DatasetInfo, cfg: RunConfig, run: RunRecord | None) -> _Source:
    weights = resolve_weights(cfg.backbone, cfg.weights)
    if run is None:
        key = features_key(cfg, info.fingerprint, weights)
        words = "ImageNet" if weights.request == "imagenet" else f"{weights.request} weights"
        return _Source(cfg, weights, key, f"pooled features ({words}, not fine-tuned)", f"{cfg.backbone} ({words})",
                       None, scores=False)  # fmt: skip
    if run.config.get("dataset", {}).get("fingerprint") not in (info.fingerprint, info.legacy_fingerprint):
        raise ConfigError(
            f"Run {run.run_id} was trained on {run.config.get('dataset', {}).get('name', 'another dataset')}, not on "
            f"{info.root.name} (or that dataset changed since); project the dataset it was trained on."
        )
    model = f"run {run.run_id}"
    if run.config.get("base_trained"):
        return _Source(cfg, weights, f"run-{run.run_id}", "pooled features (fine-tuned backbone)", model, run, False)
    key = features_key(cfg, info.fingerprint, weights)
    return _Source(cfg, weights, key, "class scores of the trained head (its backbone is not fine-tuned)", model, run,
                   scores=True)  # fmt: skip


def projection_key(source: _Source, method: str, seed: int) -> str:
    return stable_hash(
        {"features": source.features, "run": source.run.run_id if source.run else None, "scores": source.scores,
         "method": method, "seed": seed, "v": PROJECTION_FORMAT}
    )  # fmt: skip


def _index(info: DatasetInfo, image_size: int, store: Store) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, splits, paths) of the decoded images, in the order feature caches use (train, then test),
    read from the decoded-image cache without loading the pixels when it is there."""
    path = store.datasets_dir / f"{info.fingerprint}-{image_size}-v{DECODE_FORMAT_VERSION}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            y_tr, p_tr, y_te, p_te = (z[k] for k in ("y_train", "train_paths", "y_test", "test_paths"))
    except (OSError, KeyError, ValueError):
        ds = decode_dataset(info, image_size, store.datasets_dir)
        y_tr, p_tr, y_te, p_te = ds.y_train, np.asarray(ds.train_paths), ds.y_test, np.asarray(ds.test_paths)
    labels = np.concatenate([y_tr, y_te]).astype(np.int32)
    splits = np.asarray(["train"] * len(y_tr) + ["test"] * len(y_te))
    return labels, splits, np.concatenate([p_tr, p_te]).astype(str)


def _features(source: _Source, info: DatasetInfo, store: Store, n_classes: int) -> np.ndarray:
    """The source's features of every image (train then test), from the cache or computed (and cached)."""
    import keras

    cached = load_npz(store.features_dir / f"{source.features}.npz")
    if cached is not None and "train" in cached and "test" in cached:
        return np.concatenate([cached["train"], cached["test"]])
    ds = decode_dataset(info, source.cfg.image_size, store.datasets_dir)
    if source.run is not None and not source.scores:
        model = load_classifier(explained_record(source.run))  # an ensemble: its first run's features
        feature_model = keras.Model(model.inputs, model.get_layer("avg_pool").output, name="fine_tuned_features")
    else:
        feature_model = classifier_for(source.cfg, n_classes, source.weights).features
    f_train, f_test, _hit, _seconds = compute_features(FeatureFn(feature_model), ds, source.features, store)
    return np.concatenate([f_train, f_test])


_HEADS: dict[str, Any] = {}  # run id -> its head alone (small Keras models, a few kept per process)
MAX_HEADS = 8


def _head_of(run: RunRecord, in_features: int) -> Any:
    """``run``'s trained head alone, built once per process.

    A head-only run stores just its head's weights; rebuilding its whole classifier (``load_classifier``:
    the backbone with its ImageNet weights, then the head) to read that head back cost 3-6 s per projection
    on 2 busy cores, every time a map of the run was computed (PCA, t-SNE, each run). Its features come from
    the cache, so only the head is built here (milliseconds). Runs with a weights file, or a saved whole
    model, go through ``load_classifier`` (which checks that file)."""
    run = explained_record(run)  # an ensemble: its first run's head
    head = _HEADS.get(run.run_id)
    if head is not None:
        return head
    cfg = RunConfig.from_dict(run.config["run"])
    weights_file = run.path / "head.weights.h5"
    if not run.model_path.exists() and weights_file.exists() and cfg.weights in ("imagenet", "none"):
        head = head_for(cfg, len(run.config["dataset"]["classes"]), in_features)
        try:
            head.load_weights(weights_file)
        except Exception:  # noqa: BLE001 - load_classifier says why in one sentence
            head = None
    if head is None:
        head = load_classifier(run).get_layer("head")
    while len(_HEADS) >= MAX_HEADS:
        _HEADS.pop(next(iter(_HEADS)))
    _HEADS[run.run_id] = head
    return head


def _head_scores(run: RunRecord, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class scores before softmax, probabilities) of ``run``'s head on pooled ``features``."""
    import keras

    head = _head_of(run, int(features.shape[1]))
    last = head.layers[-1]
    hidden_model = keras.Model(head.inputs[0], last.input, name="head_hidden")
    hidden = np.concatenate([np.asarray(hidden_model(features[i : i + 1024], training=False))
                             for i in range(0, len(features), 1024)])  # fmt: skip
    kernel, *bias = last.get_weights()
    logits = hidden @ kernel + (bias[0] if bias else 0.0)
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits.astype(np.float32), (z / z.sum(axis=1, keepdims=True)).astype(np.float32)


def _stored_predictions(run: RunRecord, paths: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``predicted`` with each test image's stored prediction (what the run's test accuracy counts)."""
    preds = run.predictions()
    if preds is None:
        return predicted
    where = {str(p): int(np.argmax(row)) for p, row in zip(preds["paths"], preds["probs"], strict=True)}
    return np.asarray([where.get(str(p), int(q)) for p, q in zip(paths, predicted, strict=True)], np.int32)


def _pca(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """The first ``k`` principal components of centred ``x`` (signs fixed: largest loading positive).

    Randomized SVD (Halko et al.): a 2688 x 1280 matrix in a fraction of a second, where a full eigen-
    decomposition of its covariance took seconds on 2 busy cores."""
    from sklearn.utils.extmath import randomized_svd

    k = max(1, min(k, *x.shape))
    _, s, vt = randomized_svd(x, k, n_iter=7, random_state=seed)
    vt *= np.sign(vt[np.arange(len(vt)), np.argmax(np.abs(vt), axis=1)])[:, None]
    return x @ vt.T


def reduce(x: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """(n, d) -> (n, 2) by ``method`` (pca, tsne or umap), on one thread.

    One thread, because the app's server is never idle: t-SNE of mit_split_64's 2688 images took 28 s with
    scikit-learn's default OpenMP and OpenBLAS threads (2) while other processes kept the 2 cores busy, and
    3.6 s on one thread in the same conditions: with more threads than free cores, every one of its 400
    iterations waits for a descheduled thread at a barrier. On an idle machine one thread costs little."""
    from threadpoolctl import threadpool_limits

    if method not in METHODS:
        raise ConfigError(f"Unknown projection method {method!r}; expected one of {', '.join(METHODS)}.")
    with threadpool_limits(limits=1):
        return _reduce(x, method, seed)


def _reduce(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    if method == "pca" or len(x) < 5:
        out = _pca(x, 2, seed)
        return np.pad(out, ((0, 0), (0, 2 - out.shape[1]))).astype(np.float32)
    z = _pca(x, PCA_DIMS, seed)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(TSNE_PERPLEXITY, (len(x) - 1) / 3))
        tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", max_iter=TSNE_ITERATIONS,
                    angle=TSNE_ANGLE, random_state=seed, n_jobs=1)  # fmt: skip
        return tsne.fit_transform(z).astype(np.float32)
    try:
        import umap  # optional: umap-learn
    except ImportError:
        raise ConfigError("UMAP needs the umap-learn package (pip install umap-learn); choose pca or tsne.") from None
    return umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed).fit_transform(z).astype(np.float32)


def _load(path: Path, key: str) -> Projection | None:
    z = load_npz(path)
    if z is None:
        return None
    try:
        meta = json.loads(str(z["meta"]))
        return Projection(z["xy"], z["label"], z["split"].astype(str), z["paths"].astype(str), z["predicted"],
                          [str(c) for c in z["classes"]], meta.pop("method"), meta.pop("space"), meta.pop("model"),
                          key, cached=True, meta=meta)  # fmt: skip
    except (KeyError, ValueError) as exc:
        logger.warning("Projection cache %s is unusable (%s); recomputing it.", path, exc)
        return None


def project(
    data: str | os.PathLike[str], *, backbone: str, weights: str, image_size: int, store: Store,
    run: RunRecord | None = None, method: str = "pca", remove_blocks: int = 0, seed: int = 0,
) -> Projection:
    """The 2-D map of every image of ``data`` (train and test) for a backbone, or for ``run`` (whose
    backbone, weights and image size must be those given); cached under ``projections/``."""
    t0 = time.perf_counter()
    if method not in METHODS:
        raise ConfigError(f"Unknown projection method {method!r}; expected one of {', '.join(METHODS)}.")
    info = scan_dataset(data)
    cfg = RunConfig(backbone=backbone, weights=weights, image_size=image_size, remove_blocks=remove_blocks)
    if run is not None:
        cfg = RunConfig.from_dict(run.config["run"])
        given = (backbone, weights, image_size)
        if given != (cfg.backbone, cfg.weights, cfg.image_size):
            raise ConfigError(
                f"Run {run.run_id} is {cfg.backbone} ({cfg.weights} weights) at {cfg.image_size} px, not "
                f"{backbone} ({weights}) at {image_size} px; leave those out or give the run's."
            )
    cfg.validate()
    source = _source(info, cfg, run)
    key = projection_key(source, method, seed)
    cache = store.root / "projections" / f"{key}.npz"
    hit = _load(cache, key)
    if hit is not None:
        hit.seconds = time.perf_counter() - t0
        return hit
    labels, splits, paths = _index(info, cfg.image_size, store)
    x = _features(source, info, store, len(info.classes))
    if len(x) != len(labels):
        raise SceneLabError(f"The feature cache of {source.model} does not match {info.root.name}; delete "
                            f"{store.features_dir / (source.features + '.npz')} and try again.")  # fmt: skip
    predicted = np.full(len(labels), -1, np.int32)
    if run is not None:
        logits, probs = _head_scores(run, x)
        predicted = _stored_predictions(run, paths, probs.argmax(axis=1).astype(np.int32))
        x = logits if source.scores else x
    xy = reduce(x, method, seed)
    meta = {"method": method, "space": source.space, "model": source.model, "image_size": cfg.image_size,
            "dataset": info.root.name}  # fmt: skip
    try:
        atomic_write_npz(cache, xy=xy, label=labels, split=splits, paths=paths, predicted=predicted,
                         classes=np.asarray(info.classes, dtype=str), meta=np.asarray(json.dumps(meta)))  # fmt: skip
    except SceneLabError as exc:  # caching is an optimisation
        logger.warning("%s", exc)
    out = Projection(xy, labels, splits, paths, predicted, list(info.classes), method, source.space, source.model,
                     key, meta={k: v for k, v in meta.items() if k not in ("method", "space", "model")})  # fmt: skip
    out.seconds = time.perf_counter() - t0
    return out


def project_pair(
    data: str | os.PathLike[str], *, backbone: str, weights: str, image_size: int, store: Store,
    run: RunRecord | None = None, method: str = "pca", remove_blocks: int = 0, seed: int = 0,
) -> tuple[Projection, Projection | None]:
    """The backbone's map and ``run``'s (None without a run), as the dataset map shows them side by side.

    ``run``'s map is computed in a second thread while this one computes the backbone's: each projection runs
    on one thread (:func:`reduce`), so on 2 cores the two t-SNEs of the page take the time of one. They share
    no files but the features cache, which a head-only run's training has already written."""
    from concurrent.futures import ThreadPoolExecutor

    kwargs: dict[str, Any] = {"backbone": backbone, "weights": weights, "image_size": image_size, "store": store,
                              "method": method, "remove_blocks": remove_blocks, "seed": seed}  # fmt: skip
    if run is None:
        return project(data, **kwargs), None
    from threadpoolctl import threadpool_limits

    # the thread limits are the process's: set once around both threads, so that neither one's end restores
    # the other's (or leaves the process on one thread)
    with threadpool_limits(limits=1), ThreadPoolExecutor(1, thread_name_prefix="projection") as pool:
        theirs = pool.submit(project, data, run=run, **kwargs)
        return project(data, **kwargs), theirs.result()

def write_csv(projection: Projection, path: str | os.PathLike[str]) -> Path:
    """The projection as CSV (x, y, class, split, predicted, path), written atomically."""
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["x", "y", "class", "split", "predicted", "path"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(projection.rows())
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue().encode())
    return out
