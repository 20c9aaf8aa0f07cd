"""The dataset as a map (core.explain.projection) and ``python -m core project|explain`` on tiny generated data."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest

from core.cli import main
from core.config import RunConfig
from core.errors import ConfigError
from core.explain import projection as pj
from core.store.folders import Store
from core.training.train import train
from tests.conftest import make_image

TINY = RunConfig(backbone="densenet121", weights="none", remove_blocks=3, image_size=32, epochs=1, batch_size=8,
                 val_fraction=0.25)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory):
    """(store, head-only run, fine-tuned run) trained once for this module."""
    store = Store(tmp_path_factory.mktemp("proj") / "artifacts")
    head = train(TINY, tiny_dataset, store).record
    full = train(TINY.replace(phase="full"), tiny_dataset, store).record
    return store, head, full


def _last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_pca_is_the_principal_plane_and_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)) * np.array([5.0, 2.0, 0.1, 0.1, 0.1])
    xy = pj.reduce(x, "pca")
    assert xy.shape == (60, 2) and xy.dtype == np.float32
    assert xy[:, 0].var() > xy[:, 1].var() > 10 * x[:, 2].var()  # the two widest directions, widest first
    np.testing.assert_array_equal(xy, pj.reduce(x, "pca"))
    assert pj.reduce(x, "tsne").shape == (60, 2)
    with pytest.raises(ConfigError, match="Unknown projection method 'mds'"):
        pj.reduce(x, "mds")


@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn is installed here")
def test_umap_without_its_package_is_one_sentence():
    with pytest.raises(ConfigError, match="umap-learn"):
        pj.reduce(np.zeros((20, 3)), "umap")


def test_backbone_projection_is_cached_and_reuses_the_feature_cache(tiny_dataset, runs):
    store, head, _ = runs
    kw = dict(backbone="densenet121", weights="none", image_size=32, store=store, remove_blocks=3)
    features_before = sorted(store.features_dir.glob("*.npz"))
    first = pj.project(tiny_dataset, **kw)
    assert not first.cached and len(first.label) == 33 and (first.predicted == -1).all()
    assert list(first.split).count("test") == 9 and first.classes == ["coast", "forest", "street"]
    assert not first.mistakes.any() and "not fine-tuned" in first.space
    # the head run trained on exactly these features: its cache file is read, no new one is written
    assert sorted(store.features_dir.glob("*.npz")) == features_before
    again = pj.project(tiny_dataset, **kw)
    assert again.cached and again.key == first.key
    np.testing.assert_array_equal(again.xy, first.xy)
    assert (store.root / "projections" / f"{first.key}.npz").is_file()
    assert pj.project(tiny_dataset, **kw, method="tsne").key != first.key


def test_run_projections_carry_predictions_and_what_was_projected(tiny_dataset, runs):
    store, head, full = runs
    p_head = pj.project(tiny_dataset, backbone="densenet121", weights="none", image_size=32, store=store, run=head)
    assert "class scores" in p_head.space and p_head.model == f"run {head.run_id}"
    preds = head.predictions()
    stored = {str(p): int(np.argmax(r)) for p, r in zip(preds["paths"], preds["probs"], strict=True)}
    test = p_head.split == "test"
    assert [stored[str(p)] for p in p_head.path[test]] == list(p_head.predicted[test])  # what test accuracy counts
    assert int(p_head.mistakes.sum()) == sum(stored[str(p)] != lab for p, lab in zip(p_head.path[test], p_head.label[test], strict=True))
    assert (p_head.predicted >= 0).all()
    p_full = pj.project(tiny_dataset, backbone="densenet121", weights="none", image_size=32, store=store, run=full)
    assert "fine-tuned" in p_full.space and (store.features_dir / f"run-{full.run_id}.npz").is_file()
    with pytest.raises(ConfigError, match="at 64 px"):
        pj.project(tiny_dataset, backbone="densenet121", weights="none", image_size=64, store=store, run=head)


def test_cli_project_writes_one_row_per_image(tiny_dataset, runs, tmp_path, capsys):
    store, head, _ = runs
    out = tmp_path / "map.csv"
    code = main(["project", "--data", str(tiny_dataset), "--run", head.run_id, "--method", "tsne", "--out", str(out),
                 "--artifacts", str(store.root), "--json"])  # fmt: skip
    assert code == 0
    summary = _last_json(capsys.readouterr().out)
    assert summary["rows"] == 33 and summary["method"] == "tsne" and summary["out"] == str(out.resolve())
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 33 and set(rows[0]) == {"x", "y", "class", "split", "predicted", "path"}
    assert {r["split"] for r in rows} == {"train", "test"} and all(r["predicted"] for r in rows)
    assert sum(r["split"] == "test" and r["predicted"] != r["class"] for r in rows) == summary["test_mistakes"]


def test_cli_explain_a_run(tiny_dataset, runs, tmp_path, capsys):
    store, head, _ = runs
    photo = tmp_path / "photo.png"
    make_image("forest", 3, size=80).save(photo)
    out = tmp_path / "cam.png"
    code = main(["explain", "--run", head.run_id, "--image", str(photo), "--method", "gradcam++", "--class", "street",
                 "--out", str(out), "--artifacts", str(store.root), "--json"])  # fmt: skip
    assert code == 0
    r = _last_json(capsys.readouterr().out)
    assert r["class"] == "street" and r["method"] == "gradcam++" and len(r["top"]) == 3
    assert r["block"] == "conv2_block6_concat" and r["block_size"] == [8, 8]  # deepest 8-cell block of the cut
    assert abs(sum(t["probability"] for t in r["top"]) - 1) < 0.01
    from PIL import Image

    assert Image.open(out).size == (256, 256)


@pytest.mark.parametrize(
    "args, match",
    [
        (["explain", "--run", "0123456789abcdef", "--image", "{photo}"], "Run 0123456789abcdef was not found"),
        (["explain", "--run", "{run}", "--image", "/no/such.jpg"], "The image /no/such.jpg could not be used"),
        (["explain", "--run", "{run}", "--image", "{photo}", "--block", "conv9"], "Unknown block 'conv9'"),
        (["explain", "--run", "{run}", "--image", "{photo}", "--class", "desert"], "Unknown class 'desert'"),
        (["explain", "--run", "{run}", "--image", "{photo}", "--method", "lime"], "invalid choice"),
        (["explain", "--backbone", "densenet121", "--weights", "none", "--image", "{photo}"], "no classification head"),
        (["project", "--data", "{data}", "--run", "0123456789abcdef"], "Run 0123456789abcdef was not found"),
        (["project", "--data", "/no/such/folder"], "does not exist"),
    ],
)
def test_cli_bad_input_exits_2_with_one_sentence(args, match, tiny_dataset, runs, tmp_path, capsys):
    store, head, _ = runs
    photo = tmp_path / "p.png"
    make_image("coast", 1).save(photo)
    fill = {"{photo}": str(photo), "{run}": head.run_id, "{data}": str(tiny_dataset)}
    args = [fill.get(a, a) for a in args] + ["--out", str(tmp_path / "o"), "--artifacts", str(store.root)]
    with pytest.raises(SystemExit) as exc:
        raise SystemExit(main(args))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
