"""Arrays bigger than memory: written into an ``.npz`` chunk by chunk, read back memory-mapped, and their pages
handed back once a pass has read them, so a pass over 50,000 decoded images keeps about one batch resident.

An uncompressed ``.npz`` (what ``numpy.savez`` and :func:`core.store.atomic.atomic_write_npz` write) stores each
array as a ``.npy`` member, contiguous in the file: :func:`map_member` maps it read-only without copying, and the
file stays an ordinary ``.npz`` that ``numpy.load`` reads. :func:`release_rows` tells the kernel that rows a pass
has finished with may leave this process's memory (``madvise(MADV_DONTNEED)`` on a read-only shared mapping: the
file is unchanged, a later read faults the pages back in from the page cache).
"""

from __future__ import annotations

import mmap
import struct
import weakref
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.lib.array_utils import byte_bounds

PAGE = mmap.PAGESIZE
#: arrays up to this size are read into memory; larger ones are memory-mapped. A mapped file must never change in
#: place (SceneLab replaces files by renaming them), which is also why small ones, by far the common case, are read.
MAP_ABOVE_BYTES = 256 << 20
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip member's local header, before its name and extra field
_MAPPINGS: dict[int, tuple[int, weakref.ref[mmap.mmap]]] = {}  # base address -> (length, mapping)


class NotMappable(ValueError):
    """The member is compressed or not a plain ``.npy``: read it with ``numpy.load`` instead."""


def _data_offset(fh: IO[bytes], info: zipfile.ZipInfo) -> int:
    fh.seek(info.header_offset)
    fields = _LOCAL_HEADER.unpack(fh.read(_LOCAL_HEADER.size))
    if fields[0] != b"PK\x03\x04":
        raise NotMappable(f"{info.filename}: no local file header")
    name_len, extra_len = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len


def map_member(path: str | Path, name: str) -> np.ndarray:
    """The array ``name`` (e.g. ``"x_train"``) of the ``.npz`` at ``path``, memory-mapped read-only."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(f"{name}.npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise NotMappable(f"{name}.npy is compressed")
    with open(path, "rb") as fh:
        start = _data_offset(fh, info)
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise NotMappable(f"{name}.npy has format version {version}")
        if fortran or dtype.hasobject:
            raise NotMappable(f"{name}.npy is not a C-ordered array of plain values")
        offset = fh.tell()
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if offset + nbytes > start + info.file_size:
            raise NotMappable(f"{name}.npy is shorter than its header says")
        if nbytes == 0:
            return np.zeros(shape, dtype)
        mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    base = np.frombuffer(mm, np.uint8).ctypes.data
    _MAPPINGS[base] = (len(mm), weakref.ref(mm, lambda _ref, key=base: _MAPPINGS.pop(key, None)))
    return np.ndarray(shape, dtype, buffer=mm, offset=offset)


def read_or_map(path: str | Path, z: Any, name: str) -> np.ndarray:
    """Member ``name`` of the open ``numpy.load`` result ``z`` of ``path``: read when small, memory-mapped when
    larger than :data:`MAP_ABOVE_BYTES` (a compressed member is read whole)."""
    if z.zip.getinfo(f"{name}.npy").file_size <= MAP_ABOVE_BYTES:
        return z[name]
    try:
        return map_member(path, name)
    except NotMappable:
        return z[name]


def release_rows(x: np.ndarray, start: int, stop: int) -> None:
    """Rows ``start:stop`` of ``x`` were read and are not needed soon: drop their pages from this process
    (only for arrays from :func:`map_member`; anything else is left alone)."""
    if stop <= start or x.ndim == 0 or not len(x):
        return
    low, high = byte_bounds(x[start:stop])  # the bytes those rows span (a mirrored view included)
    for base, (length, ref) in list(_MAPPINGS.items()):
        mm = ref()
        if mm is None or not base <= low < base + length:
            continue
        lo = (low - base) // PAGE * PAGE
        hi = min(length, -(-(high - base) // PAGE) * PAGE)
        if hi > lo:
            mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
        return


def batches(x: np.ndarray, size: int, dtype: str | None = None) -> Iterator[np.ndarray]:
    """``x`` in consecutive batches of ``size`` rows (copied, as ``dtype`` when given); each batch's pages of a
    mapped array are released once the next one is asked for."""
    for start in range(0, len(x), size):
        stop = min(start + size, len(x))
        yield np.array(x[start:stop], dtype=dtype)
        release_rows(x, start, stop)


#: an array written without being held: its shape, dtype and its raw C-ordered bytes in chunks
Streamed = tuple[tuple[int, ...], np.dtype, Iterable[bytes]]


def write_member(zf: zipfile.ZipFile, name: str, array: np.ndarray | Streamed) -> None:
    """Add ``name.npy`` to the open zip ``zf``, uncompressed: an array, or a :data:`Streamed` one chunk by chunk."""
    if isinstance(array, np.ndarray):
        with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
            np.lib.format.write_array(out, np.asarray(array), allow_pickle=False)
        return
    shape, dtype, chunks = array
    with zf.open(f"{name}.npy", "w", force_zip64=True) as out:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(out, header)
        for chunk in chunks:
            out.write(chunk)
