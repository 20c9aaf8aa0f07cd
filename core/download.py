"""Fetch the original Oliva-Torralba 8-scene images and lay out a seeded, stratified train/test split.

The archive (spatial_envelope_256x256_static_8outdoorcategories.zip, 2688 JPEGs named
``<class>_<name>.jpg``) is downloaded once, checked, and split 70/30 per class into
``<dest>/{train,test}/<class>/``, with the class names of the MIT_split layout.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from core.errors import DatasetError

logger = logging.getLogger(__name__)

OLIVA_TORRALBA_URL = (
    "https://people.csail.mit.edu/torralba/code/spatialenvelope/"
    "spatial_envelope_256x256_static_8outdoorcategories.zip"
)
EXPECTED_IMAGES = 2688
# archive prefix -> class folder name used by MIT_split
CLASS_NAMES = {
    "coast": "coast",
    "forest": "forest",
    "highway": "highway",
    "insidecity": "inside_city",
    "mountain": "mountain",
    "opencountry": "Opencountry",
    "street": "street",
    "tallbuilding": "tallbuilding",
}
TEST_FRACTION = 807 / 2688  # the MIT_split proportion


def download(url: str, dest: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` (atomically); one sentence if the network is unreachable."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, os.fdopen(fd, "wb") as fh:  # noqa: S310
            shutil.copyfileobj(resp, fh)
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        Path(tmp).unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise DatasetError(
            f"Could not download {url} ({reason}); connect to the internet and retry, or download the zip "
            "by hand and pass it with --zip."
        ) from None
    return dest


def split_archive(
    zip_path: Path, dest: Path, seed: int = 0, expected: int | None = EXPECTED_IMAGES
) -> dict[str, dict[str, int]]:
    """Unpack the 8-scene zip into a stratified train/test layout; return counts per split/class."""
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(
            f"{zip_path} is not a readable zip file ({exc}); delete it and download it again."
        ) from None
    with archive:
        members: dict[str, list[zipfile.ZipInfo]] = {c: [] for c in CLASS_NAMES}
        for info in archive.infolist():
            name = Path(info.filename).name
            if info.is_dir() or not name.lower().endswith(".jpg") or name.startswith("."):
                continue
            prefix = name.split("_", 1)[0].lower()
            if prefix in members:
                members[prefix].append(info)
        total = sum(len(v) for v in members.values())
        empty = [c for c, v in members.items() if not v]
        if empty or (expected is not None and total != expected):
            raise DatasetError(
                f"{zip_path} holds {total} scene images (classes without images: {', '.join(empty) or 'none'}), "
                f"expected {expected} in 8 classes; delete it and download it again."
            )
        if dest.exists() and any(dest.iterdir()):
            raise DatasetError(f"{dest} is not empty; choose a new folder for the dataset.")
        tmp = Path(tempfile.mkdtemp(prefix=".split-", dir=dest.parent if dest.parent.exists() else None))
        rng = np.random.default_rng(seed)
        counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
        for prefix, infos in sorted(members.items()):
            infos = sorted(infos, key=lambda i: i.filename)
            order = rng.permutation(len(infos))
            n_test = int(round(len(infos) * TEST_FRACTION))
            cls = CLASS_NAMES[prefix]
            for rank, idx in enumerate(order):
                split = "test" if rank < n_test else "train"
                info = infos[idx]
                out = tmp / split / cls / Path(info.filename).name
                out.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                counts[split][cls] = counts[split].get(cls, 0) + 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        dest.rmdir()
    os.replace(tmp, dest)
    return counts


def download_data(dest: str | os.PathLike[str], zip_path: str | os.PathLike[str] | None = None, seed: int = 0) -> dict[str, dict[str, int]]:
    """Download (unless ``zip_path`` is given) and split the 8-scene dataset into ``dest``."""
    dest = Path(dest).expanduser()
    if zip_path is None:
        cache = Path(tempfile.gettempdir()) / "scenelab-8scene.zip"
        if not cache.exists():
            logger.info("Downloading %s", OLIVA_TORRALBA_URL)
            download(OLIVA_TORRALBA_URL, cache)
        zip_path = cache
    return split_archive(Path(zip_path), dest, seed=seed)
