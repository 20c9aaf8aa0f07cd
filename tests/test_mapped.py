"""Arrays bigger than memory (core/store/mapped.py): written chunk by chunk into an ordinary .npz, read back
memory-mapped, pages released after a pass; the decoded-image cache on top of it."""

from __future__ import annotations

import mmap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.data.arrays import decode_dataset
from core.data.scan import scan_dataset
from core.store import mapped
from core.store.atomic import atomic_write_npz_streamed
from core.store.mapped import NotMappable, batches, map_member, release_rows


def _rss_kib() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            return int(line.split()[1])
    raise AssertionError("no Rss line")


def _streamed(x: np.ndarray, chunk_rows: int = 7):
    return x.shape, x.dtype, (x[i : i + chunk_rows].tobytes() for i in range(0, len(x), chunk_rows))


def test_a_streamed_npz_is_an_ordinary_npz_and_maps_without_copying(tmp_path: Path) -> None:
    x = np.random.default_rng(0).integers(0, 255, (50, 8, 8, 3), dtype=np.uint8)
    y = np.arange(50, dtype=np.int32)
    path = tmp_path / "cache.npz"
    atomic_write_npz_streamed(path, {"x": _streamed(x), "y": y, "names": np.asarray(["a", "b"])})
    with np.load(path, allow_pickle=False) as z:  # numpy reads it as it reads np.savez's files
        assert np.array_equal(z["x"], x) and np.array_equal(z["y"], y) and list(z["names"]) == ["a", "b"]
    mapped = map_member(path, "x")
    assert np.array_equal(mapped, x) and isinstance(mapped.base, mmap.mmap) and not mapped.flags.writeable
    assert np.array_equal(np.concatenate(list(batches(mapped, 16, "float32"))), x.astype("float32"))
    assert [p.name for p in tmp_path.iterdir()] == ["cache.npz"]  # no temporary file left


def test_a_compressed_member_is_not_mapped(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    np.savez_compressed(path, x=np.ones((4, 4), np.uint8))
    with pytest.raises(NotMappable):
        map_member(path, "x")


def test_released_rows_leave_the_process_memory(tmp_path: Path) -> None:
    rows, row = 256, np.zeros((256, 256, 3), np.uint8)  # 48 MiB in all
    path = tmp_path / "big.npz"
    atomic_write_npz_streamed(path, {"x": ((rows, *row.shape), row.dtype, (row.tobytes() for _ in range(rows)))})
    x = map_member(path, "x")
    before = _rss_kib()
    assert int(x[:, :, ::-1].sum(dtype=np.int64)) == 0  # every page read (through a mirrored view)
    touched = _rss_kib()
    release_rows(x[:, :, ::-1], 0, rows)
    released = _rss_kib()
    assert touched - before > 40 * 1024, (before, touched)
    assert touched - released > 40 * 1024, (touched, released)
    assert int(x.sum(dtype=np.int64)) == 0  # still readable: the pages come back from the file


def test_large_decoded_images_are_memory_mapped_and_equal(fresh_dataset: Path, store, monkeypatch) -> None:
    info = scan_dataset(fresh_dataset)
    in_memory = decode_dataset(info, 32)  # no cache folder: decoded in memory
    monkeypatch.setattr(mapped, "MAP_ABOVE_BYTES", 0)  # every split counts as large
    events: list[dict] = []
    first = decode_dataset(info, 32, store.datasets_dir, progress=events.append)
    again = decode_dataset(info, 32, store.datasets_dir, progress=events.append)
    for ds in (first, again):
        assert isinstance(ds.x_train.base, mmap.mmap) and isinstance(ds.x_test.base, mmap.mmap)
        assert np.array_equal(ds.x_train, in_memory.x_train) and np.array_equal(ds.y_test, in_memory.y_test)
        assert ds.train_paths == in_memory.train_paths and ds.skipped == in_memory.skipped
    decoded = [e for e in events if e["event"] == "decode"]  # the second call read the cache: no events
    assert decoded and decoded[-1]["done"] == decoded[-1]["total"] == sum(len(info.files[s]) for s in ("train", "test"))
    (cache,) = store.datasets_dir.glob("*.npz")
    with zipfile.ZipFile(cache) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
