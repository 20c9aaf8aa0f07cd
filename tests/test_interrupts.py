"""Interrupted work: SIGKILL at every phase, corrupted caches, a full disk, a read-only folder.

Kill points: the CLI (``python -m core train``) is killed with SIGKILL when its stderr shows it is
computing backbone features, when the first training epoch is logged, half-way through writing a
file of the run (``SCENELAB_TEST_PAUSE_AT=write``, a pause point in ``core/store/folders.py``) and after
every file is written but before the rename (``...=commit``); ``-m slow`` adds half-way through
writing the decoded-image and feature caches. After each kill nothing claims to be complete; the
restart finishes the run and reuses the caches that were complete.

A full disk and a read-only artifacts folder are simulated twice: by monkeypatching the store's
``os.replace`` / ``os.mkdir`` / ``open`` / ``tempfile`` calls to raise ``ENOSPC`` / ``EROFS``, and
for real on a small tmpfs filled to the last byte and remounted read-only (root only; skipped
with the reason where ``mount`` is not permitted).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from core.config import RunConfig
from core.data.arrays import decode_dataset, scan_dataset
from core.errors import StoreError
from core.store.folders import RUN_FILES, Store
from tests.conftest import make_dataset

REPO = Path(__file__).resolve().parent.parent
TINY = RunConfig(backbone="densenet121", weights="none", remove_blocks=3, image_size=32, epochs=2, batch_size=8, val_fraction=0.25)


# -- driving the CLI ----------------------------------------------------------------------------------
def cli_args(data: Path, artifacts: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "core", "train", "--data", str(data), "--backbone", "densenet121", "--weights", "none",
            "--remove-blocks", "2", "--image-size", "64", "--epochs", "8", "--batch-size", "16",
            "--artifacts", str(artifacts), "--json", *extra]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCENELAB_TEST_")}
    env.update(extra)
    return env


def kill_when(args: list[str], pattern: str, env: dict[str, str] | None = None, timeout: float = 240) -> list[str]:
    """Start ``args``; SIGKILL it as soon as a stderr line matches ``pattern``; return stderr lines."""
    proc = subprocess.Popen(args, cwd=REPO, env=env or _env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no line matched {pattern!r} within {timeout} s: {seen[-5:]}")
            if line is None:
                pytest.fail(f"the process ended (rc {proc.wait()}) before {pattern!r}: {seen[-8:]}")
            seen.append(line)
            if re.search(pattern, line):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        rc = proc.wait(timeout=60)
    assert rc == -signal.SIGKILL, f"the process was not killed while working (rc {rc})"
    return seen


def run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, dict | None, str]:
    proc = subprocess.run(args, cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=300)
    out = None
    if proc.returncode == 0:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    return proc.returncode, out, proc.stderr


def claimed_runs(artifacts: Path) -> list[str]:
    """Run folders that claim to be complete (any non-hidden folder under runs/)."""
    runs = artifacts / "runs"
    return sorted(p.name for p in runs.iterdir() if not p.name.startswith(".")) if runs.is_dir() else []


def cache_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.npz") if not p.name.startswith(".")) if folder.is_dir() else []


@pytest.fixture(scope="module")
def template(tiny_dataset, tmp_path_factory):
    """One trained TINY run (and its caches), trained once; tests copy it with :func:`copy_template`."""
    from core.training.train import train

    root = tmp_path_factory.mktemp("template") / "artifacts"
    result = train(TINY.replace(seed=41), tiny_dataset, Store(root))
    return root, result


def copy_template(template, dest: Path):
    shutil.copytree(template[0], dest, ignore=shutil.ignore_patterns(".locks"))
    store = Store(dest)
    return store, store.load_run(template[1].run_id)


@pytest.fixture(scope="module")
def kill_dataset(tmp_path_factory) -> Path:
    """3 classes x (60 train + 20 test) at 64 px: long enough phases to land a kill in each."""
    return make_dataset(tmp_path_factory.mktemp("kill") / "ds", n_train=60, n_test=20, size=64)


# -- SIGKILL at each phase, then resume ---------------------------------------------------------------
def test_sigkill_at_each_phase_then_the_restart_finishes_and_reuses(kill_dataset, tmp_path):
    art = tmp_path / "artifacts"
    args = cli_args(kill_dataset, art)

    # 1. during feature extraction: the decoded-image cache was complete and is kept
    kill_when(args, r"computing backbone features")
    assert claimed_runs(art) == []
    (decoded,) = cache_files(art / "datasets")
    decoded_id = decoded.stat().st_ino
    assert cache_files(art / "features") == []

    # 2. during training: the feature cache was complete and is kept; the decoded one is reused
    kill_when(args, r"head epoch 1/8")
    assert claimed_runs(art) == []
    features = cache_files(art / "features")  # cut 2's, and cut 3's from the same pass
    features_ids = [p.stat().st_ino for p in features]
    assert len(features) == 2 and decoded.stat().st_ino == decoded_id

    # 3. half-way through writing a file of the run
    seen = kill_when(args, r"scenelab-test: paused at write:", env=_env(SCENELAB_TEST_PAUSE_AT="write"))
    assert any("write:predictions.npz" in line for line in seen)
    assert claimed_runs(art) == []
    (tmp,) = (art / "runs").glob(".tmp-*")
    assert (tmp / "model.keras").is_file() and list(tmp.glob(".predictions.*.npz"))  # the half-written temp file
    assert not (tmp / "predictions.npz").exists()

    # 4. the restart trains the run to the end, reusing both caches, and clears the debris
    code, out, err = run_cli(args)
    assert code == 0, err[-2000:]
    assert out["cached"] is False and out["feature_cache_hit"] is True and out["epochs_run"] == 8
    assert decoded.stat().st_ino == decoded_id and [p.stat().st_ino for p in features] == features_ids
    assert claimed_runs(art) == [out["run_id"]]
    assert list((art / "runs").glob(".tmp-*")) == []
    record = Store(art).load_run(out["run_id"])
    assert record is not None and len(record.history) == 8 and record.predictions()["probs"].shape == (60, 3)


@pytest.mark.slow
def test_sigkill_while_writing_the_caches_and_before_the_commit(kill_dataset, tmp_path):
    """Killed half-way through writing the decoded-image cache, then the feature cache, then with
    every file of the run written but before the rename that publishes it."""
    art = tmp_path / "artifacts"
    args = cli_args(kill_dataset, art, "--epochs", "3")
    kill_when(args, r"paused at write:datasets", env=_env(SCENELAB_TEST_PAUSE_AT="write:datasets"))
    assert cache_files(art / "datasets") == [] and list((art / "datasets").glob(".*.npz"))
    kill_when(args, r"paused at write:features", env=_env(SCENELAB_TEST_PAUSE_AT="write:features"))
    assert len(cache_files(art / "datasets")) == 1 and cache_files(art / "features") == []
    kill_when(args, r"scenelab-test: paused at commit", env=_env(SCENELAB_TEST_PAUSE_AT="commit"))
    assert claimed_runs(art) == [] and Store(art).list_runs() == []
    complete_tmp = [t for t in (art / "runs").glob(".tmp-*") if all((t / f).is_file() for f in RUN_FILES)]
    assert complete_tmp, "the commit pause came before the files were written"
    code, out, err = run_cli(args)
    assert code == 0, err[-2000:]
    assert out["feature_cache_hit"] is True and claimed_runs(art) == [out["run_id"]]
    assert len(cache_files(art / "features")) == 2 and list((art / "runs").glob(".tmp-*")) == []  # cuts 2 and 3


# -- corrupted caches are detected, reported and rebuilt ---------------------------------------------
def _truncate(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(
    "damage",
    [
        _truncate,
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(b"PK\x03\x04 not really a zip"),
        lambda p: np.savez(p, x_train=np.zeros((2, 3)), y_train=np.zeros(2), classes=np.array(["a"])),  # foreign contents
        lambda p: np.savez(p, x_train=np.array([object()], dtype=object)),  # pickled objects
    ],
    ids=["truncated", "empty", "bad-zip", "foreign", "pickled"],
)
def test_corrupt_decoded_cache_is_reported_and_rebuilt(damage, fresh_dataset, store, caplog):
    info = scan_dataset(fresh_dataset)
    ds = decode_dataset(info, 32, store.datasets_dir)
    (cache,) = store.datasets_dir.glob("*.npz")
    damage(cache)
    with caplog.at_level(logging.WARNING, logger="core.data.arrays"):
        again = decode_dataset(info, 32, store.datasets_dir)
    assert "is corrupt" in caplog.text and "rebuilding" in caplog.text
    assert np.array_equal(again.x_train, ds.x_train) and again.skipped == ds.skipped
    with np.load(cache, allow_pickle=False) as z:  # rebuilt, complete
        assert np.array_equal(z["x_train"], ds.x_train)


def test_tampered_decoded_cache_values_are_not_trusted(fresh_dataset, store, caplog):
    info = scan_dataset(fresh_dataset)
    ds = decode_dataset(info, 32, store.datasets_dir)
    (cache,) = store.datasets_dir.glob("*.npz")
    with np.load(cache, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["y_train"] = arrays["y_train"] + 7  # labels past the last class
    np.savez(cache, **arrays)
    again = decode_dataset(info, 32, store.datasets_dir)
    assert np.array_equal(again.y_train, ds.y_train) and "corrupt" in caplog.text


def test_corrupt_feature_cache_is_reported_and_rebuilt(tiny_dataset, store, caplog):
    from core.training.train import train

    first = train(TINY, tiny_dataset, store)
    (features,) = cache_files(store.features_dir)
    assert first.record.metrics["feature_cache_hit"] is False
    for i, damage in enumerate((_truncate, lambda p: np.savez(p, train=np.zeros((1, 4)), test=np.zeros((1, 4))))):
        damage(features)
        caplog.clear()
        r = train(TINY.replace(lr=0.002 + 0.001 * i), tiny_dataset, store)  # another head, same features
        assert r.record.metrics["feature_cache_hit"] is False
        assert "corrupt" in caplog.text or "does not match" in caplog.text
        rebuilt = store.features_dir / features.name
        assert rebuilt.stat().st_size > 1000  # rewritten whole
        with np.load(rebuilt, allow_pickle=False) as z:
            assert len(z["train"]) == 24 and len(z["test"]) == 9


@pytest.mark.parametrize(
    "file, content",
    [
        ("metrics.json", "{ not json"),
        ("config.json", ""),
        ("config.json", "[1, 2, 3]"),
        ("metrics.json", "[" * 100_000 + "]" * 100_000),  # nesting deeper than the parser's recursion
        ("history.csv", "epoch,loss\n1,abc\n"),
        ("history.csv", None),  # deleted
    ],
    ids=["bad-json", "empty-config", "config-not-object", "deep-json", "bad-csv", "missing-history"],
)
def test_damaged_run_is_quarantined_and_reported(file, content, template, tiny_dataset, tmp_path, caplog):
    from core.training.train import find_run

    store, record = copy_template(template, tmp_path / "artifacts")
    target = record.path / file
    if content is None:
        target.unlink()
    else:
        target.write_text(content)
    with caplog.at_level(logging.WARNING, logger="core.store.folders"):
        assert store.load_run(record.run_id) is None
    assert "is damaged" in caplog.text
    assert list(store.runs_dir.glob(f".corrupt-{record.run_id}-*")) and claimed_runs(store.root) == []
    assert find_run(TINY.replace(seed=41), tiny_dataset, store) is None  # so train() trains it again


def test_damaged_run_is_retrained(template, tiny_dataset, tmp_path):
    from core.training.train import train

    store, record = copy_template(template, tmp_path / "artifacts")
    (record.path / "metrics.json").write_text("[" * 100_000 + "]" * 100_000)
    again = train(TINY.replace(seed=41), tiny_dataset, store)
    assert not again.cached and again.run_id == record.run_id
    assert train(TINY.replace(seed=41), tiny_dataset, store).cached


def test_corrupt_predictions_do_not_crash_a_reader(template, tmp_path):
    store, record = copy_template(template, tmp_path / "artifacts")
    _truncate(record.path / "predictions.npz")
    assert record.predictions() is None


# -- full disk and read-only folder, simulated ----------------------------------------------------------
@contextlib.contextmanager
def failing_writes(monkeypatch, root: Path, err: int, *, only: tuple[str, ...] = (), spare_locks: bool = False):
    """Make every write under ``root`` (or only under its ``only`` subfolders) fail with ``err``."""
    root = root.resolve()
    prefixes = [str(root / o) for o in only] or [str(root)]

    def hit(path) -> bool:
        p = os.path.abspath(os.fspath(path))
        if spare_locks and (p.endswith(".lock") or p.endswith(os.sep + ".locks")):
            return False
        return any(p == pre or p.startswith(pre + os.sep) for pre in prefixes)

    def boom(path):
        raise OSError(err, os.strerror(err), os.fspath(path))

    real_open, real_mkstemp, real_mkdtemp, real_replace, real_mkdir, real_os_open = (
        builtins.open, tempfile.mkstemp, tempfile.mkdtemp, os.replace, os.mkdir, os.open)

    def fake_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+") and hit(file):
            boom(file)
        return real_open(file, mode, *a, **k)

    def fake_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and hit(path):
            boom(path)
        return real_os_open(path, flags, *a, **k)

    def fake_mkstemp(*a, dir=None, **k):
        if dir is not None and hit(dir):
            boom(dir)
        return real_mkstemp(*a, dir=dir, **k)

    def fake_mkdtemp(*a, dir=None, **k):
        if dir is not None and hit(dir):
            boom(dir)
        return real_mkdtemp(*a, dir=dir, **k)

    def fake_replace(src, dst, *a, **k):
        if hit(dst):
            boom(dst)
        return real_replace(src, dst, *a, **k)

    def fake_mkdir(path, *a, **k):
        if hit(path) and not os.path.isdir(path):
            boom(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(tempfile, "mkstemp", fake_mkstemp)
    monkeypatch.setattr(tempfile, "mkdtemp", fake_mkdtemp)
    monkeypatch.setattr(os, "replace", fake_replace)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    try:
        yield
    finally:
        monkeypatch.undo()


def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and ".locks" not in p.parts}


def _cli_main(capsys, data: Path, art: Path, *extra: str) -> tuple[int, str]:
    from core.cli import main

    capsys.readouterr()
    code = main(["train", "--data", str(data), "--backbone", "densenet121", "--weights", "none", "--remove-blocks", "3",
                 "--image-size", "32", "--epochs", "2", "--batch-size", "8", "--val-fraction", "0.25",
                 "--artifacts", str(art), "--json", *extra])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("err, says", [(errno.ENOSPC, "disk is full"), (errno.EROFS, "read-only"), (errno.EACCES, "read-only or not writable")])
def test_full_or_read_only_artifacts_is_one_sentence_and_keeps_earlier_results(err, says, template, tiny_dataset, tmp_path, capsys, monkeypatch):
    art = tmp_path / "artifacts"
    store, earlier = copy_template(template, art)
    before = _snapshot(art)
    # a full disk still lets the lock file be created (no data blocks); a read-only folder does not
    with failing_writes(monkeypatch, art, err, spare_locks=err == errno.ENOSPC):
        code, stderr = _cli_main(capsys, tiny_dataset, art, "--lr", "0.01")
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("scenelab:")]
    assert code == 2 and len(lines) == 1 and says in lines[0] and "Earlier results are untouched" in lines[0], stderr[-1500:]
    assert "Traceback" not in stderr
    if err == errno.ENOSPC:
        assert "artifacts/runs because" in lines[0]  # it trained, and failed only when writing the run
    assert _snapshot(art) == before  # nothing changed, nothing half-written
    assert [r.run_id for r in store.list_runs()] == [earlier.run_id] and store.load_run(earlier.run_id).metrics == earlier.metrics
    assert list(store.runs_dir.glob(".tmp-*")) == []


def test_unwritable_caches_only_cost_speed(fresh_dataset, tmp_path, monkeypatch, caplog):
    from core.training.train import train

    store = Store(tmp_path / "artifacts")
    with failing_writes(monkeypatch, store.root, errno.ENOSPC, only=("datasets", "features")):
        r = train(TINY, fresh_dataset, store)
    assert not r.cached and store.load_run(r.run_id) is not None
    assert cache_files(store.datasets_dir) == [] and cache_files(store.features_dir) == []
    assert "Could not cache decoded images" in caplog.text and "disk is full" in caplog.text


def test_too_little_free_space_refuses_before_writing(tiny_dataset, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SCENELAB_MIN_FREE_MB", str(10**9))  # a petabyte: this disk has less
    code, stderr = _cli_main(capsys, tiny_dataset, tmp_path / "a")
    assert code == 2 and "disk is full" in stderr.strip().splitlines()[-1]
    assert claimed_runs(tmp_path / "a") == [] and list((tmp_path / "a" / "runs").glob(".tmp-*")) == []


def test_disk_full_while_keras_writes_the_model_is_one_sentence(tiny_dataset, tmp_path, capsys, monkeypatch):
    import keras

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(keras.Model, "save", full)
    monkeypatch.setattr(keras.Model, "save_weights", full)
    code, stderr = _cli_main(capsys, tiny_dataset, tmp_path / "a", "--seed", "31")
    assert code == 2 and "disk is full" in stderr.strip().splitlines()[-1]
    assert list((tmp_path / "a" / "runs").glob(".tmp-*")) == []


# -- full disk and read-only folder, for real on a tmpfs ------------------------------------------------
@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "24m"):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    path.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"this machine does not allow mounting a tmpfs ({r.stderr.strip()[:120]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path: Path) -> None:
    """Write zeros until the file system is full, to the last 4 KiB page."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for size in (1 << 20, 4096):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)


def test_real_full_disk_and_read_only_mount(template, tiny_dataset, tmp_path, monkeypatch):
    from core.training.train import train

    monkeypatch.setenv("SCENELAB_MIN_FREE_MB", "1")  # the whole tmpfs is smaller than the default margin
    with small_tmpfs(tmp_path / "mnt") as mnt:
        art = mnt / "artifacts"
        _, earlier = copy_template(template, art)
        before = _snapshot(art)
        _fill(mnt)
        assert shutil.disk_usage(mnt).free < (1 << 20)

        small = make_dataset(tmp_path / "other", n_train=4, n_test=2)  # no cache for it yet: those writes fail too
        args = [sys.executable, "-m", "core", "train", "--data", str(small), "--weights", "none", "--remove-blocks", "3",
                "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--artifacts", str(art), "--json"]
        code, _, err = run_cli(args)
        assert code == 2 and "Traceback" not in err, err[-2000:]
        last = err.strip().splitlines()[-1]
        assert last.startswith("scenelab: Could not write") and "disk is full" in last, last
        assert "Could not cache decoded images" in err  # the cache write failed first and only warned

        (mnt / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True, capture_output=True)
        code, _, err = run_cli(args)
        last = err.strip().splitlines()[-1]
        assert code == 2 and "Traceback" not in err and "read-only or not writable" in last, err[-2000:]
        # earlier results are intact and still served from the read-only store
        assert _snapshot(art) == before
        again = train(TINY.replace(seed=41), tiny_dataset, Store(art))
        assert again.cached and again.record.metrics == earlier.metrics


# -- clean_stale -----------------------------------------------------------------------------------------
HOLD_LOCK = r"""
import sys, time
sys.path.insert(0, sys.argv[3])
from core.store.folders import Store
with Store(sys.argv[1]).lock(sys.argv[2]):
    print("locked", flush=True)
    time.sleep(600)
"""


def _stale(store: Store, run_id: str, suffix: str = "x1") -> Path:
    tmp = store.runs_dir / f".tmp-{run_id}-{suffix}"
    tmp.mkdir(parents=True)
    (tmp / "metrics.json").write_text("{}")
    return tmp


def test_clean_stale_without_a_locks_folder(store):
    stale = _stale(store, "aaaa1111")
    assert not (store.runs_dir / ".locks").exists()
    assert store.clean_stale() == 1 and not stale.exists()
    assert store.clean_stale() == 0
    assert Store(store.root / "never-created").clean_stale() == 0


def test_clean_stale_spares_a_live_writer_and_removes_it_once_dead(store):
    stale = _stale(store, "bbbb2222")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(store.root), "bbbb2222", str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert store.clean_stale() == 0 and stale.exists()
        with pytest.raises(StoreError, match="being trained by another session"), store.lock("bbbb2222", timeout=0.5):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert store.clean_stale() == 1 and not stale.exists()  # the kernel released the dead writer's lock


def test_clean_stale_respects_age_and_cleans_cache_temp_files(store):
    fresh = _stale(store, "cccc3333")
    assert store.clean_stale(max_age_s=3600) == 0 and fresh.exists()
    store.features_dir.mkdir(parents=True)
    old = store.features_dir / ".abc.k2j3h4.npz"
    new = store.features_dir / ".def.z9y8x7.npz"
    real = store.features_dir / "abc.npz"
    for p in (old, new, real):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    os.utime(real, (two_hours_ago, two_hours_ago))
    assert store.clean_stale(max_age_s=3600) == 1
    assert not old.exists() and new.exists() and real.exists()


def test_a_new_run_clears_its_own_killed_attempts_but_not_its_live_folder(store):
    stale = _stale(store, "dddd4444", "old")
    other = _stale(store, "eeee5555", "old")
    with store.lock("dddd4444"):
        tmp = store.begin_run("dddd4444")
        assert tmp.is_dir() and not stale.exists() and not other.exists()
        assert store.clean_stale() == 0 and tmp.is_dir()  # our own live folder is never removed
