"""Dataset zips for the import tests (tests/test_archive.py, tests/test_import_cli.py): small generated JPEGs
written as zip entries."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from tests.conftest import make_image

CLASSES = ("coast", "forest", "street")
Entry = tuple[str | zipfile.ZipInfo, bytes]


def jpeg(cls: str, i: int) -> bytes:
    buf = io.BytesIO()
    make_image(cls, i, size=16).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_zip(path: Path, entries: list[Entry], method: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for name, data in entries:
            zf.writestr(name, data)
    return path


def split_entries(prefix: str = "", n_train: int = 4, n_test: int = 2) -> list[Entry]:
    """``<prefix>train/<class>/`` and ``<prefix>test/<class>/`` images (test ones drawn apart from train's)."""
    return [
        (f"{prefix}{split}/{cls}/{cls}_{i}.jpg", jpeg(cls, i + 100 * (split == "test")))
        for split, n in (("train", n_train), ("test", n_test))
        for cls in CLASSES
        for i in range(n)
    ]
