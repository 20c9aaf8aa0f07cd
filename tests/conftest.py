"""Shared fixtures: tiny generated datasets (a few 32x32 images per class) and a temp artifact store."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parent.parent
# every process a test starts loads tests/hooks/sitecustomize.py: SCENELAB_TEST_PAUSE_AT pauses it at a checkpoint
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(REPO / "tests" / "hooks"), str(REPO), os.environ.get("PYTHONPATH", "")) if p
)
SHARED_DATASETS = REPO.parent / "shared" / "datasets"
MIT64 = SHARED_DATASETS / "mit_split_64"
COLOURS = {"coast": (40, 90, 200), "forest": (30, 140, 40), "street": (120, 120, 120)}


def make_image(cls: str, i: int, size: int = 32) -> Image.Image:
    """A class-dependent image: a base colour plus noise and a class-specific stripe pattern."""
    rng = np.random.default_rng(zlib.crc32(f"{cls}/{i}".encode()))  # the same in every process
    base = np.array(COLOURS.get(cls, (200, 60, 60)), dtype=np.float32)
    arr = base + rng.normal(0, 25, (size, size, 3))
    idx = sorted(COLOURS).index(cls) if cls in COLOURS else 3
    arr[:, :: (2 + idx), :] += 60
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_dataset(root: Path, classes=("coast", "forest", "street"), n_train: int = 8, n_test: int = 3, size: int = 32) -> Path:
    for split, n in (("train", n_train), ("test", n_test)):
        for cls in classes:
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                make_image(cls, i + (1000 if split == "test" else 0), size).save(d / f"{cls}_{i}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes x (8 train + 3 test) JPEGs of 32x32; treat as read-only."""
    return make_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture()
def fresh_dataset(tmp_path: Path) -> Path:
    """A writable copy-sized tiny dataset for tests that damage it."""
    return make_dataset(tmp_path / "ds")


@pytest.fixture()
def store(tmp_path: Path):
    from core.store.folders import Store

    return Store(tmp_path / "artifacts")


@pytest.fixture(scope="session")
def mit64(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real MIT_split at 64x64: ../shared's copy when present, else the bundled zip unpacked (so slow tests
    that need real images run everywhere, CI included)."""
    if (MIT64 / "train").is_dir():
        return MIT64
    from core.data.bundled import ensure_bundled

    return ensure_bundled(tmp_path_factory.mktemp("bundled-artifacts"))


@pytest.fixture(scope="session")
def postgres_url():
    """The URL of a PostgreSQL server for this session (``tests/pg.py``): the one ``SCENELAB_TEST_POSTGRES_URL``
    names (CI starts it), else a throwaway one started now and stopped at the end; skips without binaries.
    Only ever a server we started or were given; tests use ``pg_storage_url`` rather than this database."""
    from tests import pg

    with pg.session_server() as url:
        yield url


@pytest.fixture()
def pg_storage_url(postgres_url: str):
    """A fresh, empty database ``t_<random>`` on the session's PostgreSQL server for one test (an Optuna
    storage URL), dropped afterwards, so tests never see each other's studies."""
    from tests import pg

    with pg.fresh_database(postgres_url) as url:
        yield url
