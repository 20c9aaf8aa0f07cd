"""Tests for core.models.imagenet: the ImageNet class names shipped as core/assets/imagenet_classes.txt."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import shutil
import subprocess

import pytest

from core.models import imagenet

REPO = pathlib.Path(__file__).resolve().parents[1]
ASSET = REPO / "core" / "assets" / "imagenet_classes.txt"


def _tfds_full_names() -> list[str]:
    """IMAGENET_LABELS_LIST as the installed tensorflow-datasets has it (read as text, not imported)."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("tensorflow-datasets is not installed")
    for folder in spec.submodule_search_locations:
        path = pathlib.Path(folder) / "datasets" / "siscore" / "labels.py"
        if path.is_file():
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "IMAGENET_LABELS_LIST":
                    return ast.literal_eval(node.value)
    pytest.skip("the installed tensorflow-datasets has no IMAGENET_LABELS_LIST")


@pytest.fixture
def fresh_cache():
    imagenet._short_names.cache_clear()
    yield
    imagenet._short_names.cache_clear()


def test_file_is_the_tfds_list_with_its_source_line() -> None:
    lines = ASSET.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and "" not in lines[:-1]  # one name a line, ends with a newline, no blank lines
    head, names = lines[0], lines[1:-1]
    assert head.startswith("# ")
    for fact in ("tensorflow-datasets 4.9.10", "tensorflow_datasets/datasets/siscore/labels.py", "Apache-2.0"):
        assert fact in head
    assert not any(n.startswith("#") or n != n.strip() for n in names)
    assert names == _tfds_full_names()


def test_short_names() -> None:
    names = imagenet.imagenet_class_names()
    assert len(names) == imagenet.IMAGENET_CLASSES == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[285] == "Egyptian cat" and names[967] == "espresso"
    assert names[999] == "toilet tissue" and names[134] == "crane (bird)"  # the list itself tells the cranes apart
    # repeated short names carry their index
    assert names[638] == "maillot (638)" and names[639] == "maillot (639)"


def test_same_names_as_the_tfds_reader() -> None:
    """The short names equal what SceneLab derived from tensorflow-datasets' own list before, for all 1000."""
    full = _tfds_full_names()
    short = [n.split(",")[0].strip() for n in full]
    expected = [f"{n} ({i})" if short.count(n) > 1 else n for i, n in enumerate(short)]
    assert imagenet.imagenet_class_names() == expected


def test_cached_and_each_call_gets_its_own_list(fresh_cache: None) -> None:
    first = imagenet.imagenet_class_names()
    first[0] = "changed"
    assert imagenet.imagenet_class_names()[0] == "tench"
    assert imagenet._short_names.cache_info().misses == 1


def test_missing_or_short_file_gives_generic_names(
    fresh_cache: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(imagenet, "_ASSET_NAME", "no_such_file.txt")
    names = imagenet.imagenet_class_names()
    assert names[285] == "ImageNet class 285" and len(names) == 1000
    assert "cannot read the ImageNet class names" in caplog.text
    imagenet._short_names.cache_clear()
    monkeypatch.setattr(imagenet, "_ASSET_FOLDER", "models")
    monkeypatch.setattr(imagenet, "_ASSET_NAME", "imagenet.py")  # a file, but not 1000 names
    assert imagenet.imagenet_class_names()[0] == "ImageNet class 0"
    assert "instead of 1000" in caplog.text


def test_file_is_not_ignored_by_git() -> None:
    """The file must travel with a clone: nothing in .gitignore may exclude it."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(
        [git, "check-ignore", "-q", str(ASSET.relative_to(REPO))], cwd=REPO, capture_output=True, check=False
    )
    assert result.returncode == 1, "core/assets/imagenet_classes.txt is ignored by git"
