"""``python -m core import-data ZIP --to DIR``: the command-line half of issue 12, item 4, over ``core.data.archive``.

The archive rules themselves are tested in ``tests/test_archive.py``; here: what the command prints, that a
hostile or broken archive exits 2 with one sentence and leaves nothing, and the allowed data roots.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core import cli
from core.data.archive import IMPORT_RECORD, LOCK_NAME
from core.data.arrays import scan_dataset
from core.data.security import DATA_ROOTS_ENV
from tests.zips import CLASSES, jpeg, split_entries, write_zip

REPO = Path(__file__).resolve().parent.parent
def split_zip(path: Path) -> Path:
    entries = split_entries("mit/")
    return write_zip(path, [*entries, ("mit/README.txt", b"notes"), ("__MACOSX/._x.jpg", b"junk")])


def class_zip(path: Path, n: int = 10) -> Path:
    return write_zip(path, [(f"{cls}/{cls}_{i}.jpg", jpeg(cls, i)) for cls in CLASSES for i in range(n)])


def run_cli(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = cli.main(["import-data", *args])
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 and "--json" in args else None), err


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME) if folder.exists() else []


def test_a_split_zip_is_imported_and_reported(tmp_path, capsys):
    dest = tmp_path / "data" / "mit"
    code, payload, err = run_cli(capsys, str(split_zip(tmp_path / "mit.zip")), "--to", str(dest), "--json")
    assert code == 0, err
    assert payload["to"] == str(dest.resolve()) and payload["was_split"] is False
    assert payload["counts"] == {"train": dict.fromkeys(CLASSES, 4), "test": dict.fromkeys(CLASSES, 2)}
    assert payload["images"] == 18 and payload["test_share"] == pytest.approx(6 / 18, abs=1e-4)
    assert payload["test_fraction"] is None and payload["seed"] is None
    assert {s["path"] for s in payload["skipped"]} == {"mit/README.txt", "__MACOSX/._x.jpg"}
    assert all(s["reason"] for s in payload["skipped"])
    assert scan_dataset(dest).classes == list(CLASSES) and (dest / IMPORT_RECORD).is_file()


def test_class_folders_are_split_by_the_given_fraction_and_seed(tmp_path, capsys):
    zp = class_zip(tmp_path / "scenes.zip")
    runs = []
    for name in ("a", "b"):
        code, payload, err = run_cli(capsys, str(zp), "--to", str(tmp_path / name), "--test-fraction", "0.2",
                                     "--seed", "7", "--json")
        assert code == 0, err
        runs.append(sorted(p.name for p in (tmp_path / name / "test").rglob("*.jpg")))
    assert payload["was_split"] is True and payload["test_fraction"] == 0.2 and payload["seed"] == 7
    assert payload["counts"]["test"] == dict.fromkeys(CLASSES, 2) and payload["test_share"] == 0.2
    assert runs[0] == runs[1]  # the same seed, the same split


def test_without_to_it_goes_under_the_first_allowed_root(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(DATA_ROOTS_ENV, str(tmp_path / "allowed"))
    code, payload, err = run_cli(capsys, str(split_zip(tmp_path / "mine.zip")), "--json")
    assert code == 0, err
    assert payload["to"] == str((tmp_path / "allowed" / "uploads" / "mine").resolve())
    code, _, err = run_cli(capsys, str(split_zip(tmp_path / "x.zip")), "--to", str(tmp_path / "elsewhere"))
    assert code == 2 and "outside the folders this installation allows" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "elsewhere").exists()


def _raw(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _symlink_entry() -> zipfile.ZipInfo:
    link = zipfile.ZipInfo("train/coast/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return link


HOSTILE = {
    "dotdot": (lambda p: write_zip(p, [*_entries(), ("train/coast/../../../evil.jpg", jpeg("coast", 0))]), "outside the folder"),
    "absolute": (lambda p: write_zip(p, [*_entries(), ("/tmp/evil.jpg", jpeg("coast", 0))]), "outside the folder"),
    "symlink": (lambda p: write_zip(p, [*_entries(), (_symlink_entry(), b"/etc/passwd")]), "symbolic link"),
    "not-a-zip": (lambda p: _raw(p, b"Rar!\x1a\x07\x00 not a zip at all"), "is not a readable zip file"),
    "truncated": (lambda p: _raw(p, split_zip(p).read_bytes()[:700]), "is not a readable zip file"),
    "no-images": (lambda p: write_zip(p, [("notes/readme.txt", b"hello"), ("data.csv", b"1,2")]), "no image files"),
    "missing": (lambda p: p, "does not exist"),
}


def _entries() -> list[tuple[str, bytes]]:
    return [(f"{s}/{c}/{c}_{i}.jpg", jpeg(c, i)) for s in ("train", "test") for c in CLASSES for i in range(2)]


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_or_broken_archives_exit_2_with_one_sentence_and_leave_nothing(tmp_path, capsys, kind):
    make, words = HOSTILE[kind]
    zp = make(tmp_path / "upload.zip")
    parent = tmp_path / "data"
    code, _, err = run_cli(capsys, str(zp), "--to", str(parent / "ds"), "--json")
    assert code == 2, err
    assert err.startswith("scenelab: ") and words in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    assert leftovers(parent) == []  # no destination, no temporary folder
    assert not (tmp_path / "evil.jpg").exists()


@pytest.mark.parametrize(("args", "words"), [(["--test-fraction", "1.5"], "test_fraction"),
                                             (["--test-fraction", "nan"], "test_fraction"),
                                             (["--seed", "-1"], "--seed")])
def test_bad_options_exit_2_with_one_sentence(tmp_path, capsys, args, words):
    code, _, err = run_cli(capsys, str(class_zip(tmp_path / "c.zip")), "--to", str(tmp_path / "d"), *args)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "d").exists()


def test_a_full_destination_is_refused(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("keep me")
    code, _, err = run_cli(capsys, str(class_zip(tmp_path / "c.zip")), "--to", str(tmp_path / "d"))
    assert code == 2 and "not empty" in err
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["mine.txt"]


def test_the_command_line_itself_exits_2_for_a_hostile_zip(tmp_path):
    zp = write_zip(tmp_path / "evil.zip", [*_entries(), ("../evil.jpg", jpeg("coast", 0))])
    env = {k: v for k, v in os.environ.items() if k != DATA_ROOTS_ENV}
    proc = subprocess.run([sys.executable, "-m", "core", "import-data", str(zp), "--to", str(tmp_path / "ds"), "--json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines()[-1].startswith("scenelab: evil.zip was refused")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "evil.jpg").exists()
