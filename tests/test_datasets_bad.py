"""Bad dataset folders: each one works or gives one sentence, never a traceback.

Layout problems (no train/, no test/, classes that differ, empty classes, one class), stray files,
symbolic link loops, hidden files, unreadable folders and files, non-ASCII and non-UTF-8 names,
2 and 200 classes; through ``scan_dataset``/``decode_dataset``, through the CLI in-process, and
once through a real ``python -m core`` process. ``-m slow``: scene15_gray as a user's own dataset.

Unreadable permissions: the tests run as root, for whom ``chmod 000`` blocks nothing. They are
simulated twice: by monkeypatching ``os.scandir`` / ``open`` to raise ``PermissionError``, and for
real in a child process that drops to the unprivileged uid 65534 (``os.setuid``) after importing,
so ``chmod 000`` applies (skipped where that is impossible; run directly when not root).
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from core.config import RunConfig
from core.data.arrays import decode_dataset, scan_dataset
from core.errors import DatasetError
from tests.conftest import SHARED_DATASETS, make_dataset, make_image

REPO = Path(__file__).resolve().parent.parent
SCENE15 = SHARED_DATASETS / "scene15_gray"
TINY = RunConfig(backbone="densenet121", weights="none", remove_blocks=3, image_size=32, epochs=1, batch_size=8, val_fraction=0.25)


def one_sentence(text: str) -> str:
    """Assert ``text`` is one line, one message, no traceback; return it."""
    text = text.strip()
    assert text, "empty message"
    assert "\n" not in text, f"more than one line: {text!r}"
    assert "Traceback" not in text and "Error:" not in text.split(";")[0][:12], text
    assert text.endswith("."), f"not a sentence: {text!r}"
    assert len(text) < 800, f"too long: {text!r}"
    return text


def cli_sentence(capsys, data: Path | str, tmp_path: Path) -> str:
    """Run ``python -m core train`` in-process on ``data``: exit 2 and one line on stderr."""
    from core.cli import main

    capsys.readouterr()
    code = main(["train", "--data", str(data), "--backbone", "densenet121", "--weights", "none",
                 "--remove-blocks", "3", "--image-size", "32", "--epochs", "1", "--artifacts", str(tmp_path / "art")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("scenelab: "), err
    return one_sentence(err[0][len("scenelab: "):])


# -- layouts that must be refused with one sentence ---------------------------------------------------
def _rm(path: Path) -> None:
    shutil.rmtree(path)


BAD_LAYOUTS = {
    "no-train": (lambda r: _rm(r / "train"), "no 'train' folder"),
    "no-test": (lambda r: _rm(r / "test"), "no 'test' folder"),
    "train-is-a-file": (lambda r: (_rm(r / "train"), (r / "train").write_text("x")), "no 'train' folder"),
    "class-missing-from-test": (lambda r: _rm(r / "test" / "forest"), "missing from test: forest"),
    "class-only-in-test": (lambda r: (r / "test" / "desert").mkdir(), "only in test: desert"),
    "class-is-a-file-in-test": (lambda r: (_rm(r / "test" / "coast"), (r / "test" / "coast").write_text("x")), "missing from test: coast"),
    "empty-class-in-train": (lambda r: [f.unlink() for f in (r / "train" / "street").iterdir()], "street .*hold no image"),
    "empty-class-in-test": (lambda r: [f.unlink() for f in (r / "test" / "coast").iterdir()], "coast .*hold no image"),
    "class-of-text-files": (lambda r: [f.rename(f.with_suffix(".txt")) for f in (r / "train" / "forest").iterdir()], "forest .*hold no image"),
    "one-class": (lambda r: [_rm(r / s / c) for s in ("train", "test") for c in ("forest", "street")], "at least 2"),
    "no-classes": (lambda r: [_rm(r / s / c) for s in ("train", "test") for c in ("coast", "forest", "street")], "at least 2"),
    "only-hidden-classes": (lambda r: [(r / s / c).rename(r / s / f".{c}") for s in ("train", "test") for c in ("coast", "forest", "street")], "at least 2"),
    "root-is-a-file": (lambda r: (_rm(r), r.write_text("x")), "is a file"),
    "root-missing": (lambda r: _rm(r), "does not exist"),
    "root-symlink-loop": (lambda r: (_rm(r), os.symlink(r, r)), "link loop|cannot be read"),
    "root-broken-symlink": (lambda r: (_rm(r), os.symlink(r.parent / "gone", r)), "gone does not exist"),
}


@pytest.mark.parametrize("name", list(BAD_LAYOUTS))
def test_bad_layout_is_one_sentence(name, fresh_dataset, tmp_path, capsys):
    damage, match = BAD_LAYOUTS[name]
    damage(fresh_dataset)
    with pytest.raises(DatasetError, match=match) as exc:
        scan_dataset(fresh_dataset)
    one_sentence(str(exc.value))
    import re

    assert re.search(match, cli_sentence(capsys, fresh_dataset, tmp_path))


def test_class_whose_every_image_is_corrupt_is_one_sentence(fresh_dataset, store):
    for f in (fresh_dataset / "train" / "forest").iterdir():
        f.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match="No image of class.* forest") as exc:
        decode_dataset(scan_dataset(fresh_dataset), 32, store.datasets_dir)
    one_sentence(str(exc.value))


# -- oddities that must simply work -------------------------------------------------------------------
def test_stray_hidden_linked_and_special_files_work(fresh_dataset, store):
    train = fresh_dataset / "train"
    coast = train / "coast"
    (train / "README.txt").write_text("files at class level")
    (train / "stray.jpg").write_bytes((coast / "coast_0.jpg").read_bytes())
    for hidden in (train / ".DS_Store", coast / ".DS_Store", coast / "._coast_0.jpg", coast / "Thumbs.db"):
        hidden.write_bytes(b"\x00\x05\x16\x07")
    (train / ".git").mkdir()
    (train / "__MACOSX").mkdir()
    (train / "__MACOSX" / "x.jpg").write_bytes(b"junk")
    (coast / "nested").mkdir()
    os.symlink("loop.jpg", coast / "loop.jpg")  # a link to itself
    os.symlink(coast / "nested", coast / "nested" / "cycle")  # a folder cycle below a class
    os.symlink(train / "ring", train / "ring")  # a looping "class" in train only
    os.symlink(fresh_dataset / "nothing.jpg", coast / "broken.jpg")
    os.mkfifo(coast / "pipe.jpg")  # opening it would block forever
    os.symlink(coast / "coast_1.jpg", coast / "alias.jpg")  # an ordinary link inside the dataset

    info = scan_dataset(fresh_dataset)
    assert info.classes == ["coast", "forest", "street"]
    reasons = {s.path: s.reason for s in info.skipped}
    assert reasons["train/README.txt"] == reasons["train/stray.jpg"] == "file outside any class folder"
    assert reasons["train/coast/nested"].startswith("folder inside a class folder")
    for name in ("loop.jpg", "broken.jpg", "pipe.jpg"):
        assert "not a regular file" in reasons[f"train/coast/{name}"] or "cannot be read" in reasons[f"train/coast/{name}"]
    assert not any("DS_Store" in p or "._" in p or "Thumbs" in p or "MACOSX" in p or ".git" in p for p in reasons)
    ds = decode_dataset(info, 32, store.datasets_dir)
    assert "train/coast/alias.jpg" in ds.train_paths and len(ds.x_train) == 8 * 3 + 1


def test_non_ascii_and_non_utf8_names_work_end_to_end(tmp_path, store):
    from core.training.train import train

    names = ("café", "森林", "улица", "tab\there")
    root = tmp_path / "ünïcode ds"
    for split, n in (("train", 6), ("test", 2)):
        for k, cls in enumerate(names):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                make_image(("coast", "forest", "street", "other")[k], i).save(d / f"{cls}_{i}.jpg")
    # a file name that is not valid UTF-8 (bytes 0xff 0xfe), as copied from an old camera card
    raw = os.fsencode(root / "train" / "café") + b"/\xff\xfeimg.jpg"
    with open(raw, "wb") as fh:
        make_image("coast", 99).save(fh, format="JPEG")

    info = scan_dataset(root)
    assert info.classes == sorted(names)
    assert scan_dataset(root).fingerprint == info.fingerprint
    ds = decode_dataset(info, 32, store.datasets_dir)
    assert len(ds.x_train) == 6 * 4 + 1
    assert any("\udcff\udcfe" in p for p in ds.train_paths)  # kept as surrogate escapes, not dropped
    r = train(TINY, root, store)
    assert r.record.metrics["classes"] == sorted(names)
    assert train(TINY, root, store).cached


@pytest.mark.parametrize("n_classes", [2, 200])
def test_two_and_two_hundred_classes_train(n_classes, tmp_path, store):
    from core.training.train import train

    root = tmp_path / f"c{n_classes}"
    per_train = 4 if n_classes == 2 else 2
    for split, n in (("train", per_train), ("test", 1)):
        for c in range(n_classes):
            d = root / split / f"class_{c:03d}"
            d.mkdir(parents=True)
            for i in range(n):
                img = np.full((16, 16, 3), (c * 37 % 256, c * 91 % 256, (c * 13 + i) % 256), np.uint8)
                from PIL import Image

                Image.fromarray(img).save(d / f"{i}.png")
    info = scan_dataset(root)
    assert len(info.classes) == n_classes
    r = train(TINY.replace(batch_size=32), root, store)
    m = r.record.metrics
    assert len(m["classes"]) == n_classes and np.array(m["confusion"]).shape == (n_classes, n_classes)
    assert m["n_test"] == n_classes and r.record.predictions()["probs"].shape == (n_classes, n_classes)


# -- unreadable folders and files ---------------------------------------------------------------------
def test_unreadable_class_folder_simulated(fresh_dataset, tmp_path, capsys, monkeypatch):
    real = os.scandir
    blocked = str(fresh_dataset / "train" / "forest")

    def scandir(path="."):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", blocked)
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(DatasetError, match="forest cannot be read \\(permission denied\\)") as exc:
        scan_dataset(fresh_dataset)
    one_sentence(str(exc.value))
    assert "permission denied" in cli_sentence(capsys, fresh_dataset, tmp_path)


def test_unreadable_split_and_root_simulated(fresh_dataset, monkeypatch):
    real = os.scandir
    for blocked in (fresh_dataset / "test", fresh_dataset / "train", fresh_dataset):
        def scandir(path=".", _b=str(blocked)):
            if os.fspath(path) == _b:
                raise PermissionError(13, "Permission denied", _b)
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
        if blocked == fresh_dataset:  # the root itself is listed only to describe a missing split
            (fresh_dataset / "test").rename(fresh_dataset / "tst")
        with pytest.raises(DatasetError, match="cannot be read") as exc:
            scan_dataset(fresh_dataset)
        one_sentence(str(exc.value))


def test_unreadable_image_files_simulated(fresh_dataset, store, monkeypatch):
    real_open = builtins.open
    blocked = {str(fresh_dataset / "train" / "coast" / "coast_0.jpg"), str(fresh_dataset / "test" / "street" / "street_1.jpg")}

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) in blocked:
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    ds = decode_dataset(scan_dataset(fresh_dataset), 32, None)
    reasons = {s.path: s.reason for s in ds.skipped}
    assert reasons == {
        "train/coast/coast_0.jpg": "cannot be read (permission denied)",
        "test/street/street_1.jpg": "cannot be read (permission denied)",
    }
    assert len(ds.x_train) == 23 and len(ds.x_test) == 8


UNPRIVILEGED_CHILD = r"""
import json, os, sys
sys.path.insert(0, os.getcwd())
from core.data.arrays import decode_dataset, decode_image, scan_dataset
from core.errors import DatasetError
from PIL import Image
Image.init()
import io
buf = io.BytesIO(); Image.new("RGB", (4, 4)).save(buf, "JPEG"); decode_image(buf.getvalue(), 4)
if os.getuid() == 0:
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
out = {"uid": os.getuid()}
for key in ("class_blocked", "file_blocked"):
    try:
        ds = decode_dataset(scan_dataset(sys.argv[1] + "/" + key), 16, None)
        out[key] = {"ok": True, "skipped": [[s.path, s.reason] for s in ds.skipped], "n": len(ds.x_train)}
    except DatasetError as exc:
        out[key] = {"ok": False, "message": str(exc)}
print(json.dumps(out))
"""


def test_unreadable_for_real_as_an_unprivileged_user():
    if os.getuid() == 0:
        try:
            probe = subprocess.run([sys.executable, "-c", "import os; os.setgid(65534); os.setuid(65534)"], capture_output=True, timeout=60)
        except OSError as exc:
            pytest.skip(f"cannot start a child that drops privileges: {exc}")
        if probe.returncode != 0:
            pytest.skip("this machine does not allow dropping to uid 65534 (no CAP_SETUID)")
    base = Path(tempfile.mkdtemp(prefix="scenelab-perm-"))
    try:
        for key in ("class_blocked", "file_blocked"):
            make_dataset(base / key, n_train=3, n_test=2, size=16)
        for dirpath, _dirnames, filenames in os.walk(base):
            os.chmod(dirpath, 0o755)
            for f in filenames:
                os.chmod(os.path.join(dirpath, f), 0o644)
        os.chmod(base / "class_blocked" / "train" / "forest", 0)
        os.chmod(base / "file_blocked" / "train" / "coast" / "coast_0.jpg", 0)
        proc = subprocess.run([sys.executable, "-c", UNPRIVILEGED_CHILD, str(base)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out["uid"] != 0
        blocked = out["class_blocked"]
        assert not blocked["ok"] and "forest cannot be read (permission denied)" in one_sentence(blocked["message"])
        fb = out["file_blocked"]
        assert fb["ok"] and fb["skipped"] == [["train/coast/coast_0.jpg", "cannot be read (permission denied)"]] and fb["n"] == 8
    finally:
        for dirpath, _, _ in os.walk(base):
            os.chmod(dirpath, stat.S_IRWXU)
        shutil.rmtree(base, ignore_errors=True)


def test_a_real_cli_process_answers_a_link_loop_with_one_sentence(tmp_path):
    loop = tmp_path / "loop"
    os.symlink(loop, loop)
    proc = subprocess.run([sys.executable, "-m", "core", "train", "--data", str(loop), "--artifacts", str(tmp_path / "a")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("scenelab: ") and "link loop" in one_sentence(last[len("scenelab: "):])


# -- a user's own dataset, for real -------------------------------------------------------------------
@pytest.mark.slow
def test_scene15_gray_trains_as_a_users_own_dataset(tmp_path, monkeypatch):
    if not (SCENE15 / "train").is_dir():
        pytest.skip(f"the real dataset is absent ({SCENE15}); see ../shared/datasets/README.md")
    from core.store.folders import Store
    from core.training.train import train

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("SCENELAB_DATA_ROOTS", str(SHARED_DATASETS))  # the restriction lets it in
    cfg = RunConfig(backbone="efficientnet_lite0", weights="imagenet", image_size=64, epochs=8, batch_size=64, lr=1e-3)
    r = train(cfg, SCENE15, Store(tmp_path / "artifacts"))
    m = r.record.metrics
    assert len(m["classes"]) == 15 and m["n_test"] == 2985 and m["n_skipped"] == 0
    print("scene15_gray, efficientnet_lite0 head at 64 px:", {k: m[k] for k in ("train_accuracy", "val_accuracy", "test_accuracy", "seconds")})
    assert m["test_accuracy"] > 0.4  # chance is 1/15 = 0.067
