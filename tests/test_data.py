"""Dataset discovery, validation and decoding of every odd image kind."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.data.arrays import (
    ImageDecodeError,
    decode_dataset,
    decode_image,
    make_splits,
    scan_dataset,
)
from core.errors import DatasetError


def _png_bytes(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Image.new("RGB", (20, 10), (10, 20, 30)),
        lambda: Image.new("L", (20, 10), 128),
        lambda: Image.new("RGBA", (20, 10), (10, 20, 30, 0)),
        lambda: Image.new("P", (20, 10), 3),
        lambda: Image.new("CMYK", (20, 10), (0, 50, 100, 0)),
        lambda: Image.fromarray(np.full((10, 20), 40000, dtype=np.uint16)),
        lambda: Image.new("1", (20, 10), 1),
        lambda: Image.new("LA", (20, 10), (100, 255)),
    ],
    ids=["rgb", "grey", "rgba", "palette", "cmyk", "16bit", "1bit", "la"],
)
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF"])
def test_every_mode_and_format_decodes_to_rgb(make, fmt):
    img = make()
    try:
        data = _png_bytes(img, fmt)
    except (OSError, ValueError, KeyError):
        pytest.skip(f"Pillow cannot write {img.mode} as {fmt}")
    out = decode_image(data, size=16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8


def test_sixteen_bit_keeps_its_brightness():
    arr = decode_image(_png_bytes(Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))))
    assert arr.min() == 255


def test_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    out = decode_image(buf.getvalue())
    assert out[0, 0, 0] > 200 and out[0, 0, 2] < 50


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90
    out = decode_image(_png_bytes(img, "JPEG", exif=exif.tobytes()))
    assert out.shape == (20, 10, 3)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"", "not a recognised image"),
        (b"hello, I am text", "not a recognised image"),
        (b"<html><body>not an image</body></html>", "not a recognised image"),
        (_png_bytes(Image.new("RGB", (64, 64)), "JPEG")[:200], "corrupt or truncated"),
        (_png_bytes(Image.new("RGB", (64, 64)), "PNG")[:60], "corrupt or truncated"),
    ],
    ids=["empty", "text", "html", "truncated-jpeg", "truncated-png"],
)
def test_bad_files_raise_one_reason(payload, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(payload)


def test_decompression_bomb_is_refused():
    # a 10000x10000 PNG is tiny on disk but 100 megapixels
    big = Image.new("L", (10000, 10000))
    with pytest.raises(ImageDecodeError, match="megapixel|too large"):
        decode_image(_png_bytes(big))


def test_scan_reports_classes_counts_and_fingerprint(tiny_dataset):
    info = scan_dataset(tiny_dataset)
    assert info.classes == ["coast", "forest", "street"]
    assert info.counts()["train"] == {"coast": 8, "forest": 8, "street": 8}
    assert len(info.fingerprint) == 16
    assert scan_dataset(tiny_dataset).fingerprint == info.fingerprint


def test_fingerprint_changes_when_a_file_changes(fresh_dataset):
    before = scan_dataset(fresh_dataset).fingerprint
    (fresh_dataset / "train" / "coast" / "coast_0.jpg").write_bytes(b"changed")
    assert scan_dataset(fresh_dataset).fingerprint != before


def test_bad_images_are_skipped_and_listed(fresh_dataset, store):
    bad = fresh_dataset / "train" / "coast"
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not a picture")
    (bad / "notes.txt").write_text("readme")
    (bad / ".DS_Store").write_bytes(b"\0\0")
    (fresh_dataset / "train" / "stray.jpg").write_bytes(b"x")
    info = scan_dataset(fresh_dataset)
    ds = decode_dataset(info, 32, store.datasets_dir)
    reasons = {s.path: s.reason for s in ds.skipped}
    assert "train/coast/zero.jpg" in reasons and "train/coast/text.jpg" in reasons
    assert reasons["train/coast/notes.txt"] == "not an image file extension"
    assert reasons["train/stray.jpg"] == "file outside any class folder"
    assert not any(".DS_Store" in p for p in reasons)
    assert len(ds.x_train) == 24 and ds.x_train.shape[1:] == (32, 32, 3)
    # the decoded cache gives the same arrays and the same report
    again = decode_dataset(info, 32, store.datasets_dir)
    assert np.array_equal(again.x_train, ds.x_train) and again.skipped == ds.skipped


def test_corrupt_decoded_cache_is_rebuilt(fresh_dataset, store):
    info = scan_dataset(fresh_dataset)
    ds = decode_dataset(info, 32, store.datasets_dir)
    (cache,) = store.datasets_dir.glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    again = decode_dataset(info, 32, store.datasets_dir)
    assert np.array_equal(again.x_train, ds.x_train)


def test_class_with_only_bad_images_is_an_error(fresh_dataset, store):
    for f in (fresh_dataset / "test" / "forest").iterdir():
        f.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="forest"):
        decode_dataset(scan_dataset(fresh_dataset), 32, store.datasets_dir)


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda r: shutil.rmtree(r / "train"), "no 'train' folder"),
        (lambda r: shutil.rmtree(r / "test"), "no 'test' folder"),
        (lambda r: shutil.rmtree(r / "test" / "forest"), "missing from test: forest"),
        (lambda r: (r / "test" / "desert").mkdir(), "only in test: desert"),
        (lambda r: [f.unlink() for f in (r / "train" / "street").iterdir()], "street .* hold no image"),
        (lambda r: [shutil.rmtree(r / s / c) for s in ("train", "test") for c in ("forest", "street")], "at least 2"),
    ],
    ids=["no-train", "no-test", "missing-class", "extra-class", "empty-class", "one-class"],
)
def test_bad_layouts_give_one_sentence(fresh_dataset, damage, match):
    damage(fresh_dataset)
    with pytest.raises(DatasetError, match=match) as exc:
        scan_dataset(fresh_dataset)
    assert "\n" not in str(exc.value)


def test_missing_and_file_paths(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        scan_dataset(tmp_path / "file")


def test_splits_are_stratified_seeded_and_nested():
    y = np.repeat(np.arange(4), 100)
    a = make_splits(y, 0.15, seed=1)
    b = make_splits(y, 0.15, seed=1)
    assert np.array_equal(a.val, b.val) and not np.intersect1d(a.train, a.val).size
    assert np.bincount(y[a.val]).tolist() == [15, 15, 15, 15]
    small = make_splits(y, 0.15, seed=1, train_per_class=50)
    assert np.array_equal(small.val, a.val)  # the small set shares validation with the full one
    assert np.bincount(y[small.train]).tolist() == [50, 50, 50, 50]
    assert set(small.train) <= set(a.train)
    assert not np.array_equal(make_splits(y, 0.15, seed=2).val, a.val)


def test_real_dataset_layout(mit64: Path):
    info = scan_dataset(mit64)
    assert len(info.classes) == 8
    assert sum(info.counts()["train"].values()) == 1881
    assert sum(info.counts()["test"].values()) == 807


def test_the_scan_reports_its_progress_to_the_last_file(fresh_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "digests"))  # every file read, none from the digest cache
    events: list[dict] = []
    info = scan_dataset(fresh_dataset, progress=events.append)
    files = sum(len(v) for v in info.files.values())
    assert events and all(e["event"] == "scan" for e in events)
    assert events[-1]["done"] == events[-1]["total"] >= files  # every image counted (and skipped names too)
