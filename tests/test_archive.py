"""Importing a dataset zip (core.data.archive) and the bundled dataset (core.data.bundled): layouts, hostile and
broken archives, decompression bombs, SIGKILL midway, and two processes at once."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import stat
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from core.data import archive, bundled
from core.data.archive import IMPORT_RECORD, ImportResult, Limits, default_upload_root, import_zip
from core.data.arrays import scan_dataset
from core.errors import ConfigError, DataRootError, DatasetError
from tests.zips import CLASSES, jpeg, split_entries, write_zip

REPO = Path(__file__).resolve().parent.parent
def class_entries(prefix: str = "", n: int = 10) -> list[tuple[str | zipfile.ZipInfo, bytes]]:
    return [(f"{prefix}{cls}/{cls}_{i}.jpg", jpeg(cls, i)) for cls in CLASSES for i in range(n)]


def leftovers(folder: Path) -> list[str]:
    """What an import left in ``folder`` besides its lock file."""
    return sorted(p.name for p in folder.iterdir() if p.name != archive.LOCK_NAME) if folder.exists() else []


def patch_entry(data: bytes, name: str, *, flags: int | None = None, file_size: int | None = None) -> bytes:
    """``data`` (a zip) with the central-directory (and local) header of ``name`` rewritten."""
    out = bytearray(data)
    for m in re.finditer(rb"PK\x01\x02", data):
        at = m.start()
        n_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46 : at + 46 + n_len] != name.encode():
            continue
        local = struct.unpack_from("<I", data, at + 42)[0]
        if flags is not None:
            struct.pack_into("<H", out, at + 8, flags)
            struct.pack_into("<H", out, local + 6, flags)
        if file_size is not None:
            struct.pack_into("<I", out, at + 24, file_size)
            struct.pack_into("<I", out, local + 22, file_size)
        return bytes(out)
    raise AssertionError(f"{name} not in the zip")


def refused(zip_path: Path, dest: Path, match: str, **kw) -> str:
    """Import must fail with one sentence matching ``match`` and leave nothing beside ``dest``."""
    with pytest.raises(DatasetError, match=match) as err:
        import_zip(zip_path, dest, **kw)
    msg = str(err.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert not dest.exists() and leftovers(dest.parent) == []
    return msg


# -- layouts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "mydata/"])
def test_split_layout_is_unpacked_validated_and_junk_is_listed(tmp_path, prefix):
    junk = [
        ("__MACOSX/mydata/._coast_0.jpg", b"mac"),
        (f"{prefix}.DS_Store", b"ds"),
        (f"{prefix}README.txt", b"hello"),
        (f"{prefix}train/coast/notes.txt", b"n"),
        (f"{prefix}train/coast/deeper/coast_9.jpg", jpeg("coast", 9)),
        (f"{prefix}train/loose.jpg", jpeg("coast", 8)),
    ]
    src = write_zip(tmp_path / "up.zip", split_entries(prefix) + junk, zipfile.ZIP_DEFLATED)
    events: list[dict] = []
    res = import_zip(src, tmp_path / "out" / "ds", progress=events.append)
    assert isinstance(res, ImportResult) and res.dest == (tmp_path / "out" / "ds").resolve()
    assert not res.was_split and res.test_share == pytest.approx(6 / 18, abs=1e-3)
    assert res.counts == {"train": dict.fromkeys(CLASSES, 4), "test": dict.fromkeys(CLASSES, 2)}
    reasons = {s.path.split("/")[-1]: s.reason for s in res.skipped}
    assert reasons[".DS_Store"] == "hidden or system file" and reasons["._coast_0.jpg"] == "hidden or system file"
    assert reasons["README.txt"] == reasons["notes.txt"] == "not an image file extension"
    assert "sub-folder" in reasons["coast_9.jpg"] and "outside any class folder" in reasons["loose.jpg"]
    info = scan_dataset(res.dest)
    assert info.classes == sorted(CLASSES) and not info.skipped
    with zipfile.ZipFile(src) as zf:  # bytes intact
        assert (res.dest / "test/forest/forest_1.jpg").read_bytes() == zf.read(f"{prefix}test/forest/forest_1.jpg")
    assert [e["done"] for e in events] == list(range(1, 19)) and events[-1]["total"] == 18
    assert json.loads((res.dest / IMPORT_RECORD).read_text())["source"] == "up.zip"
    assert leftovers(tmp_path / "out") == ["ds"]


@pytest.mark.parametrize("prefix", ["", "holiday_pics/"])
def test_class_folders_are_split_stratified_and_seeded(tmp_path, prefix):
    entries = class_entries(prefix) + [(f"{prefix}tiny/tiny_{i}.jpg", jpeg("tiny", i)) for i in range(2)]
    src = write_zip(tmp_path / "classes.zip", entries)
    a = import_zip(src, tmp_path / "a", test_fraction=0.3, seed=7)
    assert a.was_split
    assert a.counts["test"] == {"coast": 3, "forest": 3, "street": 3, "tiny": 1}
    assert a.counts["train"] == {"coast": 7, "forest": 7, "street": 7, "tiny": 1}
    assert a.test_share == pytest.approx(10 / 32, abs=1e-3)
    names = lambda root: sorted(p.name for p in (root / "test").rglob("*.jpg"))  # noqa: E731
    again = import_zip(src, tmp_path / "b", test_fraction=0.3, seed=7)
    other = import_zip(src, tmp_path / "c", test_fraction=0.3, seed=8)
    assert names(a.dest) == names(again.dest) != names(other.dest)
    assert scan_dataset(a.dest).counts() == a.counts


def test_an_existing_empty_destination_is_used_and_a_full_one_refused(tmp_path):
    src = write_zip(tmp_path / "s.zip", split_entries())
    (tmp_path / "empty").mkdir()
    assert import_zip(src, tmp_path / "empty").dest == (tmp_path / "empty").resolve()
    with pytest.raises(DatasetError, match="already exists and is not empty; choose a new folder"):
        import_zip(src, tmp_path / "empty")
    with pytest.raises(ConfigError, match="test_fraction"):
        import_zip(src, tmp_path / "x", test_fraction=1.0)


def test_destination_must_be_inside_the_allowed_roots(tmp_path, monkeypatch):
    src = write_zip(tmp_path / "s.zip", split_entries())
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    monkeypatch.setenv("SCENELAB_DATA_ROOTS", str(allowed))
    assert default_upload_root() == allowed.resolve() / "uploads"
    with pytest.raises(DataRootError, match="outside the folders this installation allows"):
        import_zip(src, tmp_path / "elsewhere")
    with pytest.raises(DataRootError, match="allowed data folder itself"):
        import_zip(src, allowed)
    assert import_zip(src, default_upload_root() / "mine").dest.is_relative_to(allowed.resolve())
    monkeypatch.delenv("SCENELAB_DATA_ROOTS")
    assert default_upload_root() == REPO / "data" / "uploads"


# -- refusals -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["../evil.jpg", "train/coast/../../../evil.jpg", "/tmp/evil.jpg", "C:/evil.jpg", "..\\..\\evil.jpg",
     "train\\coast\\..\\..\\..\\evil.jpg"],
)
def test_entries_that_escape_are_refused_and_nothing_is_written(tmp_path, name):
    src = write_zip(tmp_path / "bad.zip", split_entries() + [(name, b"payload")])
    msg = refused(src, tmp_path / "out" / "ds", "points outside the folder")
    assert "bad.zip" in msg and not list(tmp_path.rglob("evil*")) and not Path("/tmp/evil.jpg").exists()


def test_symlink_entries_are_refused(tmp_path):
    link = zipfile.ZipInfo("train/coast/link.jpg")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    src = write_zip(tmp_path / "links.zip", split_entries() + [(link, b"/etc/passwd")])
    refused(src, tmp_path / "out" / "ds", "is a symbolic link")


@pytest.mark.parametrize(
    "content, match",
    [(b"this is not a zip", "not a readable zip file"), (b"", "not a readable zip file"), (None, "does not exist")],
)
def test_not_a_zip_is_one_sentence(tmp_path, content, match):
    path = tmp_path / "upload.zip"
    if content is not None:
        path.write_bytes(content)
    refused(path, tmp_path / "out" / "ds", match)


def test_a_truncated_zip_is_refused(tmp_path):
    data = write_zip(tmp_path / "full.zip", split_entries(), zipfile.ZIP_DEFLATED).read_bytes()
    (tmp_path / "cut.zip").write_bytes(data[: len(data) // 2])
    refused(tmp_path / "cut.zip", tmp_path / "out" / "ds", "not a readable zip file")


def test_damaged_data_is_refused_midway_and_cleaned(tmp_path):
    data = bytearray(write_zip(tmp_path / "ok.zip", split_entries()).read_bytes())
    with zipfile.ZipFile(tmp_path / "ok.zip") as zf:
        last = zf.infolist()[-1]
    data[last.header_offset + 30 + len(last.filename) + 5] ^= 0xFF  # one byte of the last image
    (tmp_path / "crc.zip").write_bytes(bytes(data))
    refused(tmp_path / "crc.zip", tmp_path / "out" / "ds", r"is damaged .*Bad CRC-32")


def test_an_encrypted_zip_is_refused(tmp_path):
    data = write_zip(tmp_path / "p.zip", split_entries()).read_bytes()
    (tmp_path / "enc.zip").write_bytes(patch_entry(data, "train/coast/coast_0.jpg", flags=0x1))
    refused(tmp_path / "enc.zip", tmp_path / "out" / "ds", "password-protected")


@pytest.mark.parametrize(
    "entries, match",
    [
        ([("README.txt", b"x"), ("__MACOSX/._a.jpg", b"x"), ("docs/a.pdf", b"x")], r"holds no image files .*'README.txt', 'docs'"),
        ([("a.jpg", jpeg("coast", 0)), ("b.jpg", jpeg("coast", 1))], r"no images in a recognised layout .*'a.jpg', 'b.jpg'"),
        ([(f"coast/c{i}.jpg", jpeg("coast", i)) for i in range(4)], r"class folders 'coast' \(4\); at least 2 classes"),
        ([("coast/c.jpg", jpeg("coast", 0)), ("forest/f.jpg", jpeg("forest", 0))], r"'coast' \(1\), 'forest' \(1\)"),
        ([(n, d) for n, d in split_entries() if not n.startswith("test/")], r"s\.zip has no 'test' folder"),
        ([(n, d) for n, d in split_entries() if "test/street" not in n], r"s\.zip have different classes \(missing from test: street"),
    ],
)
def test_layouts_that_cannot_be_used_say_what_was_found(tmp_path, entries, match):
    msg = refused(write_zip(tmp_path / "s.zip", entries), tmp_path / "out" / "ds", match)
    assert ".import-" not in msg


# -- decompression bombs ------------------------------------------------------------------------------
def test_a_high_ratio_entry_is_refused_while_streaming(tmp_path):
    bomb = ("train/coast/bomb.bmp", bytes(8 << 20))  # 8 MiB of zeros deflate about 1000x
    src = write_zip(tmp_path / "bomb.zip", split_entries() + [bomb], zipfile.ZIP_DEFLATED)
    refused(src, tmp_path / "out" / "ds", r"likely decompression bomb: its entry .*bomb.bmp.* over 200 times")


@pytest.mark.parametrize(
    "limits, match",
    [
        (Limits(max_file_bytes=1 << 20), "unpacks to more than 1 MiB"),
        (Limits(max_total_bytes=1 << 20), "more than 1 MiB in all"),
        (Limits(max_files=10), r"holds 19 entries, over the limit of 10"),
    ],
)
def test_caps_on_size_and_count(tmp_path, limits, match):
    big = ("train/coast/big.bmp", os.urandom(3 << 20))  # incompressible: only the size caps stop it
    src = write_zip(tmp_path / "big.zip", split_entries() + [big])
    refused(src, tmp_path / "out" / "ds", match, limits=limits)


def test_header_sizes_are_not_trusted(tmp_path):
    # a bomb whose header claims 100 bytes is still refused (unpacking stops, nothing is kept) ...
    data = write_zip(tmp_path / "b.zip", split_entries() + [("train/coast/b.bmp", bytes(8 << 20))], zipfile.ZIP_DEFLATED).read_bytes()
    (tmp_path / "liar.zip").write_bytes(patch_entry(data, "train/coast/b.bmp", file_size=100))
    refused(tmp_path / "liar.zip", tmp_path / "out" / "ds", "bomb|damaged")
    # ... and a small image whose header claims 3.75 GiB is imported: the bytes produced are counted
    data = write_zip(tmp_path / "ok.zip", split_entries()).read_bytes()
    (tmp_path / "huge.zip").write_bytes(patch_entry(data, "train/coast/coast_0.jpg", file_size=0xF000_0000))
    res = import_zip(tmp_path / "huge.zip", tmp_path / "out" / "fine", limits=Limits(max_total_bytes=1 << 20))
    assert (res.dest / "train/coast/coast_0.jpg").read_bytes() == jpeg("coast", 0)


def test_duplicate_entries_are_skipped_and_listed(tmp_path):
    dup = split_entries()[0]
    with pytest.warns(UserWarning, match="Duplicate name"):
        src = write_zip(tmp_path / "dup.zip", split_entries() + [dup])
    res = import_zip(src, tmp_path / "ds")
    assert [s.reason for s in res.skipped] == ["duplicate entry (same file name twice in the zip)"]


def test_raising_from_progress_cancels_and_leaves_nothing(tmp_path):
    def cancel(event: dict) -> None:
        if event["done"] == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_zip(write_zip(tmp_path / "s.zip", split_entries()), tmp_path / "out" / "ds", progress=cancel)
    assert leftovers(tmp_path / "out") == []


# -- interrupted and concurrent imports ---------------------------------------------------------------
def start_paused(code: str, at: str) -> subprocess.Popen:
    """Run ``code`` in a new Python process that pauses at the test hook ``at``; return once it is there."""
    env = {**os.environ, "SCENELAB_TEST_PAUSE_AT": at, "SCENELAB_TEST_PAUSE_S": "60"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    if f"paused at {at}" not in line:
        proc.kill()
        pytest.fail(f"the process did not pause at {at}: {line}{proc.stderr.read()[-2000:]}")
    return proc


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    if proc.stderr:
        proc.stderr.close()


@pytest.mark.parametrize("at", ["import:write", "import:commit"])
def test_sigkill_midway_leaves_no_destination_and_the_next_import_cleans_up(tmp_path, at):
    src = write_zip(tmp_path / "s.zip", split_entries())
    dest = tmp_path / "out" / "ds"
    kill(start_paused(f"from core.data.archive import import_zip; import_zip({str(src)!r}, {str(dest)!r})", at))
    assert not dest.exists()
    (stale,) = leftovers(tmp_path / "out")
    assert stale.startswith(".import-ds-")
    res = import_zip(src, dest)
    assert leftovers(tmp_path / "out") == ["ds"] and scan_dataset(res.dest).counts() == res.counts


def test_a_live_import_is_not_cleaned_by_another(tmp_path):
    src = write_zip(tmp_path / "s.zip", split_entries())
    out = tmp_path / "out"
    proc = start_paused(f"from core.data.archive import import_zip; import_zip({str(src)!r}, {str(out / 'a')!r})", "import:write")
    try:
        import_zip(src, out / "b")  # the same parent folder, while the other is half-way
        assert any(n.startswith(".import-a-") for n in leftovers(out))
    finally:
        kill(proc)
    import_zip(src, out / "c")
    assert leftovers(out) == ["b", "c"]


# -- the bundled dataset ------------------------------------------------------------------------------
def test_the_shipped_zip_is_the_known_file():
    assert bundled.BUNDLED_ZIP.is_file() and bundled.BUNDLED_ZIP == REPO / "artifacts/bundled/mit_split_64.zip"
    assert hashlib.sha256(bundled.BUNDLED_ZIP.read_bytes()).hexdigest() == bundled.BUNDLED_SHA256
    assert "64" in bundled.BUNDLED_NOTE and "MIT_split" in bundled.BUNDLED_NOTE and "256" in bundled.BUNDLED_NOTE


def test_ensure_bundled_unpacks_once_then_returns_at_once(tmp_path, monkeypatch):
    folder = bundled.ensure_bundled(tmp_path / "artifacts")
    assert folder == tmp_path / "artifacts" / "bundled" / "mit_split_64" and bundled.is_bundled(folder)
    info = scan_dataset(folder)
    assert len(info.classes) == 8 and {k: sum(v.values()) for k, v in info.counts().items()} == {"train": 1881, "test": 807}
    assert info.counts()["test"]["Opencountry"] == 118 and info.counts()["train"]["tallbuilding"] == 248

    for name in ("import_zip", "check_zip"):
        monkeypatch.setattr(bundled, name, lambda *a, **k: pytest.fail("unpacked twice"))
    t0 = time.perf_counter()
    assert bundled.ensure_bundled(tmp_path / "artifacts") == folder
    assert time.perf_counter() - t0 < 1.0  # one small file read, not a re-scan (the bench measures it)
    assert not bundled.is_bundled(tmp_path) and not bundled.is_bundled(tmp_path / "nowhere")


def test_missing_or_tampered_bundled_zip_is_one_sentence(tmp_path):
    with pytest.raises(DatasetError, match=r"cannot be read .*git checkout -- artifacts/bundled/mit_split_64.zip"):
        bundled.ensure_bundled(tmp_path / "a", zip_path=tmp_path / "gone.zip")
    data = bytearray(bundled.BUNDLED_ZIP.read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "t.zip").write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"has been altered \(sha256 .*expected 2303a03e65a8"):
        bundled.ensure_bundled(tmp_path / "a", zip_path=tmp_path / "t.zip")
    assert not (tmp_path / "a" / "bundled" / "mit_split_64").exists()


def test_a_folder_without_the_record_is_moved_aside_not_trusted(tmp_path):
    stray = tmp_path / "artifacts" / "bundled" / "mit_split_64"
    (stray / "train").mkdir(parents=True)
    folder = bundled.ensure_bundled(tmp_path / "artifacts")
    assert bundled.is_bundled(folder) and len(list(folder.parent.glob("mit_split_64.old-*/train"))) == 1


def test_two_processes_at_once_end_with_one_valid_folder(tmp_path):
    code = f"from core.data.bundled import ensure_bundled; print(ensure_bundled({str(tmp_path / 'art')!r}))"
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert {o.strip() for o, _ in outs} == {str(tmp_path / "art" / "bundled" / "mit_split_64")}
    parent = tmp_path / "art" / "bundled"
    assert sorted(p.name for p in parent.iterdir() if not p.name.endswith(".lock")) == ["mit_split_64"]
    assert bundled.is_bundled(parent / "mit_split_64")


def test_sigkill_while_unpacking_the_bundled_copy_then_it_completes(tmp_path):
    art = tmp_path / "art"
    kill(start_paused(f"from core.data.bundled import ensure_bundled; ensure_bundled({str(art)!r})", "import:commit"))
    assert not (art / "bundled" / "mit_split_64").exists()
    assert bundled.is_bundled(bundled.ensure_bundled(art))
    assert sorted(p.name for p in (art / "bundled").iterdir() if not p.name.endswith(".lock")) == ["mit_split_64"]


def test_an_uploaded_file_object_is_imported_and_named_in_messages(tmp_path):
    upload = io.BytesIO(write_zip(tmp_path / "s.zip", split_entries()).read_bytes())
    upload.name = "holiday.zip"  # as Streamlit's UploadedFile
    res = import_zip(upload, tmp_path / "ds")
    assert json.loads((res.dest / IMPORT_RECORD).read_text())["source"] == "holiday.zip"
    refused(io.BytesIO(b"not a zip"), tmp_path / "out" / "x", "^the uploaded zip is not a readable zip file")


def test_bundled_folder_outside_the_allowed_roots_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv("SCENELAB_DATA_ROOTS", str(tmp_path / "allowed"))
    with pytest.raises(DataRootError, match="The bundled dataset folder .* is outside the folders"):
        bundled.ensure_bundled(tmp_path / "art")
    assert not (tmp_path / "art").exists()
