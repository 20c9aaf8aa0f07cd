"""Security: dataset-root restriction, no unsafe deserialisation, uploads decoded from bytes, no secrets.

Each refusal is checked against a live payload: the malicious ``.keras`` model really runs its code
when loaded unsafely (the control), and is refused by every path SceneLab uses.
"""

from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core.config import RunConfig
from core.data.arrays import ImageDecodeError, decode_image, scan_dataset
from core.data.security import DATA_ROOTS_ENV, allowed_roots, check_data_root
from core.errors import DataRootError, DatasetError, WeightsError
from tests.conftest import make_dataset

REPO = Path(__file__).resolve().parent.parent
TINY = RunConfig(backbone="densenet121", weights="none", remove_blocks=3, image_size=32, epochs=1, batch_size=8, val_fraction=0.25)


# -- SCENELAB_DATA_ROOTS ------------------------------------------------------------------------------
@pytest.fixture()
def roots(tmp_path, monkeypatch):
    """Two allowed folders (one holding a dataset) and a secret folder outside them."""
    allowed = tmp_path / "allowed"
    other = tmp_path / "course"
    secret = tmp_path / "secret"
    make_dataset(allowed / "ds", n_train=3, n_test=2)
    make_dataset(secret / "ds", n_train=3, n_test=2)
    other.mkdir()
    (tmp_path / "allowed-evil").mkdir()  # shares a prefix with "allowed", but is another folder
    make_dataset(tmp_path / "allowed-evil" / "ds", n_train=3, n_test=2)
    monkeypatch.setenv(DATA_ROOTS_ENV, os.pathsep.join([str(allowed), "", str(other)]))
    return tmp_path


def test_unset_or_empty_roots_restrict_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ROOTS_ENV, raising=False)
    assert allowed_roots() == []
    assert check_data_root(tmp_path / "anything") == (tmp_path / "anything").resolve()
    monkeypatch.setenv(DATA_ROOTS_ENV, os.pathsep)
    assert allowed_roots() == []


def test_paths_inside_the_roots_are_allowed(roots):
    assert len(allowed_roots()) == 2
    assert check_data_root(roots / "allowed") == (roots / "allowed").resolve()
    assert check_data_root(roots / "allowed" / "ds") == (roots / "allowed" / "ds").resolve()
    assert check_data_root(roots / "allowed" / "ds" / ".." / "ds") == (roots / "allowed" / "ds").resolve()
    assert check_data_root(roots / "course" / "not-yet-there")  # inside: allowed even if absent
    os.symlink(roots / "allowed" / "ds", roots / "course" / "link-to-allowed")
    assert check_data_root(roots / "course" / "link-to-allowed") == (roots / "allowed" / "ds").resolve()
    assert scan_dataset(roots / "allowed" / "ds").classes == ["coast", "forest", "street"]


@pytest.mark.parametrize(
    "make_path",
    [
        lambda r: r / "secret" / "ds",  # plainly outside
        lambda r: r / "allowed" / ".." / "secret" / "ds",  # '..' escaping
        lambda r: r / "allowed" / "ds" / ".." / ".." / ".." / ".." / "etc",
        lambda r: r / "allowed-evil" / "ds",  # a prefix is not a parent
        lambda r: Path("/"),
        lambda r: r / "secret" / "does-not-exist",  # refused before existence is looked at
    ],
    ids=["outside", "dotdot", "dotdot-deep", "prefix-trick", "filesystem-root", "outside-missing"],
)
def test_paths_outside_the_roots_are_refused_with_one_sentence(roots, make_path):
    path = make_path(roots)
    with pytest.raises(DataRootError, match="outside the folders this installation allows") as exc:
        scan_dataset(path)
    msg = str(exc.value)
    assert "\n" not in msg and msg.endswith(".")
    assert "does not exist" not in msg  # no probing of the server's folders
    assert isinstance(exc.value, DatasetError)  # the app's dataset error handling shows it


def test_symlinks_escaping_the_roots_are_refused_without_naming_their_target(roots):
    link = roots / "allowed" / "innocent"
    os.symlink(roots / "secret" / "ds", link)
    with pytest.raises(DataRootError) as exc:
        scan_dataset(link)
    assert "secret" not in str(exc.value).split("SCENELAB_DATA_ROOTS")[0].replace(str(link), "")
    # a link to a parent of the allowed folder is an escape too
    os.symlink(roots, roots / "allowed" / "up")
    with pytest.raises(DataRootError):
        scan_dataset(roots / "allowed" / "up" / "secret" / "ds")
    # a link loop cannot be used to get past the check either
    os.symlink(roots / "allowed" / "loop", roots / "allowed" / "loop")
    with pytest.raises(DatasetError, match="link loop|does not exist"):
        scan_dataset(roots / "allowed" / "loop")


def test_links_inside_an_allowed_dataset_cannot_reach_outside(roots):
    ds = roots / "allowed" / "ds"
    secret_img = roots / "secret" / "ds" / "train" / "coast" / "coast_0.jpg"
    os.symlink(secret_img, ds / "train" / "forest" / "stolen.jpg")
    info = scan_dataset(ds)
    reasons = {s.path: s.reason for s in info.skipped}
    assert "outside the allowed data folders" in reasons["train/forest/stolen.jpg"]
    assert all("stolen" not in rel for rel, _ in info.files["train"])
    # a class folder that links outside is refused as a whole
    for split in ("train", "test"):
        os.symlink(roots / "secret" / "ds" / split / "coast", ds / split / "zcoast")
    with pytest.raises(DataRootError, match="zcoast links to a folder outside"):
        scan_dataset(ds)


def test_the_cli_enforces_the_roots(roots, tmp_path, capsys):
    from core.cli import main

    code = main(["train", "--data", str(roots / "secret" / "ds"), "--weights", "none", "--artifacts", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "outside the folders this installation allows" in err[0]
    assert not (tmp_path / "a" / "runs").exists()


# -- no unsafe deserialisation in the code ------------------------------------------------------------
SCANNED = ["core", "pages", "app.py", "bench"]
PICKLE_ALLOWED = {"core/models/legacy_pth.py"}  # its restricted unpickler allows four globals; tested in test_legacy_pth.py


def _python_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        p = REPO / name
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            files.extend(sorted(p.rglob("*.py")))
    return files


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def unsafe_calls(source: str, rel: str) -> list[str]:
    """Every call or import that could deserialise untrusted data into code, with its line."""
    found = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                if mod.split(".")[0] in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal") and rel not in PICKLE_ALLOWED:
                    found.append(f"{rel}:{node.lineno} imports {mod}")
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        where = f"{rel}:{node.lineno} {name}"
        for key in ("allow_pickle", "safe_mode"):
            value = kw.get(key)
            if isinstance(value, ast.Constant) and value.value is (key == "allow_pickle"):
                found.append(f"{where}({key}={value.value})")
            elif value is not None and not isinstance(value, ast.Constant):
                found.append(f"{where}({key}=<not a literal>)")
        if name in ("np.load", "numpy.load") and not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
            found.append(f"{where} without allow_pickle=False")
        if name.split(".")[-1] in ("load", "loads", "Unpickler") and name.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib", "marshal", "torch") and rel not in PICKLE_ALLOWED:
            found.append(where)
        risky = name in ("yaml.load", "yaml.unsafe_load", "eval", "exec", "keras.config.enable_unsafe_deserialization")
        if risky and not (name == "yaml.load" and "SafeLoader" in ast.dump(node)):
            found.append(where)
    return found


def test_the_scanner_catches_what_it_looks_for():
    bad = (
        "import pickle\nimport numpy as np\nimport keras\n"
        "pickle.load(f)\nnp.load(p)\nnp.load(p, allow_pickle=True)\n"
        "keras.models.load_model(p, safe_mode=False)\neval(s)\ntorch.load(p)\n"
    )
    found = unsafe_calls(bad, "x.py")
    assert {int(f.split(":")[1].split()[0]) for f in found} == {1, 4, 5, 6, 7, 8, 9}, found
    assert unsafe_calls("import numpy as np\nnp.load(p, allow_pickle=False)\nkeras.models.load_model(p, safe_mode=True)\n", "x.py") == []


def test_no_unsafe_deserialisation_anywhere():
    files = _python_files()
    assert any(f.name == "arrays.py" for f in files) and any(f.name == "folders.py" for f in files)
    found = []
    for path in files:
        found += unsafe_calls(path.read_text(encoding="utf-8"), path.relative_to(REPO).as_posix())
    assert found == [], "unsafe deserialisation: " + "; ".join(found)


def test_lite0_unpickler_allows_only_its_globals():
    from core.models import legacy_pth
    allowed = set(legacy_pth._ALLOWED_GLOBALS) if hasattr(legacy_pth, "_ALLOWED_GLOBALS") else None
    source = (REPO / "core" / "models" / "legacy_pth.py").read_text()
    assert "def find_class" in source and "pickle.load(" not in source and "pickle.loads(" not in source
    if allowed is not None:
        assert allowed <= {("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage"), ("torch", "LongStorage")}


# -- malicious model and weights files ----------------------------------------------------------------
def _evil_model(tmp_path: Path, marker: Path):
    import keras

    fn = eval(f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]")  # the payload
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Lambda(fn, name="payload")])
    marker.unlink(missing_ok=True)  # building ran it once; start clean
    return model


def test_a_keras_file_with_a_lambda_is_refused_and_never_runs(tmp_path, tiny_dataset):
    import keras

    from core.store.folders import RunRecord
    from core.training.runs import load_classifier

    marker = tmp_path / "pwned"
    model = _evil_model(tmp_path, marker)
    run = tmp_path / "runs" / "planted"
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    model.save(tmp_path / "evil.h5")
    record = RunRecord("planted", run, {"run": TINY.to_dict(), "dataset": {"classes": ["a", "b", "c"]}}, {}, [])
    from core.errors import StoreError

    with pytest.raises(StoreError, match="Lambda|safe_mode|unsafe|arbitrary code") as exc:
        load_classifier(record)
    assert "Traceback" not in str(exc.value) and len(str(exc.value).splitlines()) == 1
    assert "train the run again" in str(exc.value)
    assert not marker.exists()
    with pytest.raises(ValueError):
        keras.models.load_model(tmp_path / "evil.h5")
    assert not marker.exists()
    # control: the payload is live; loading unsafely runs it (so the refusals above mean something)
    keras.models.load_model(run / "model.keras", safe_mode=False)
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".keras", ".h5", ".pth"])
def test_malicious_weights_files_are_refused_and_never_run(suffix, tmp_path, tiny_dataset, store):
    from core.training.train import train

    class RunsCommand:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    if suffix == ".pth":
        evil.write_bytes(pickle.dumps(RunsCommand(), protocol=2))
    else:
        _evil_model(tmp_path, marker).save(evil)
    for backbone in ("densenet121", "efficientnet_lite0"):
        with pytest.raises(WeightsError, match="does not fit") as exc:
            train(TINY.replace(backbone=backbone, weights=str(evil)), tiny_dataset, store)
        assert "\n" not in str(exc.value)
        assert not marker.exists(), f"{suffix} weights ran code through {backbone}"
    assert store.list_runs() == []


# -- uploads -------------------------------------------------------------------------------------------
def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (10, 6), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def test_uploads_are_decoded_from_bytes_without_touching_the_disk(tmp_path, monkeypatch):
    import builtins
    import io

    data = _jpeg()

    def no_files(*a, **k):
        raise AssertionError(f"an upload touched the file system: {a!r:.80}")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(builtins, "open", no_files)
    monkeypatch.setattr(os, "open", no_files)
    for source in (data, bytearray(data), memoryview(data), io.BytesIO(data)):
        arr = decode_image(source, 8)
        assert arr.shape == (8, 8, 3) and arr[..., 0].mean() > 150
    # bytes that spell a path are image bytes, not a file to read
    for evil in (b"/etc/passwd", b"../../etc/shadow", os.fsencode(tmp_path / "x.jpg")):
        with pytest.raises(ImageDecodeError, match="not a recognised image"):
            decode_image(evil)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_uploads_cannot_reach_other_pillow_decoders(monkeypatch):
    import io
    import shutil as _shutil
    import subprocess as sp

    from PIL import Image

    def no_subprocess(*a, **k):
        raise AssertionError("a decoder started a process (Ghostscript?)")

    monkeypatch.setattr(sp, "Popen", no_subprocess)
    monkeypatch.setattr(sp, "check_call", no_subprocess)
    monkeypatch.setattr(_shutil, "which", lambda *a, **k: "/usr/bin/gs")  # pretend Ghostscript exists
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto showpage\n"
    for payload in (eps, _pillow_bytes(Image.new("RGB", (8, 8)), "PPM"), _pillow_bytes(Image.new("RGB", (8, 8)), "TGA"),
                    _pillow_bytes(Image.new("RGB", (16, 16)), "ICO"), _pillow_bytes(Image.new("RGB", (8, 8)), "PCX")):
        with pytest.raises(ImageDecodeError, match=r"not a recognised image format \(JPEG, PNG, BMP, GIF, WEBP or TIFF expected\)"):
            decode_image(payload)
    assert decode_image(io.BytesIO(_jpeg()).getvalue()).shape == (6, 10, 3)


def _pillow_bytes(img, fmt: str) -> bytes:
    import io

    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# -- nothing private in the repository ----------------------------------------------------------------
SECRET_PATTERNS = {
    "absolute path of a developer machine": re.compile("(?<![.\\w])/(?:" + "root" + "|" + "work" + "|" + "home" + ")/"),
    "private key": re.compile("-----BEGIN [A-Z ]*" + "PRIVATE KEY-----"),
    "AWS access key id": re.compile("\\b(?:A" + "KIA|A" + "SIA)[0-9A-Z]{16}\\b"),
    "GitHub token": re.compile("\\bgh" + "[pousr]_[A-Za-z0-9]{36,}\\b"),
    "Slack token": re.compile("\\bxo" + "x[baprs]-[A-Za-z0-9-]{10,}"),
    "OpenAI-style key": re.compile("\\bs" + "k-[A-Za-z0-9]{32,}\\b"),
    "password assignment": re.compile("(?i)\\b(?:pass" + "word|pass" + "wd|secret_key|api_key)\\s*[:=]\\s*['\"][^'\"\\s]{6,}['\"]"),
}
SECRET_FILE_NAMES = re.compile(r"(^|/)(id_rsa|id_ed25519|\.env|.*\.pem|.*\.p12|.*\.key|credentials(\.json)?)$")


def repository_files() -> list[str]:
    """Tracked files plus new files git would add (not ignored): what the repository will hold."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"not a git checkout ({exc})")
    return sorted({f for f in out.decode("utf-8", "surrogateescape").split("\0") if f and (REPO / f).is_file()})


def secrets_in(text: str) -> list[str]:
    return [what for what, pattern in SECRET_PATTERNS.items() if pattern.search(text)]


def test_the_secret_patterns_match_what_they_should():
    assert secrets_in("data at " + "/ro" + "ot/.keras/models") and secrets_in("cd " + "/wo" + "rk/main")
    assert secrets_in("-----BEGIN RSA " + "PRIVATE KEY-----") and secrets_in("key = " + "AKIA" + "ABCDEFGHIJKLMNOP")
    assert secrets_in("pass" + "word = 'hunter22'")
    assert secrets_in("../shared/datasets/mit_split_64 and ~/.keras/models and /tmp/x") == []


def test_no_secret_or_developer_path_in_the_repository():
    files = repository_files()
    assert "core/data/arrays.py" in files
    problems = [f"{f}: secret-looking file name" for f in files if SECRET_FILE_NAMES.search(f)]
    for rel in files:
        raw = (REPO / rel).read_bytes()
        if b"\0" in raw[:4096]:  # binary: only the file name is checked
            continue
        text = raw.decode("utf-8", "replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            for what in secrets_in(line):
                problems.append(f"{rel}:{lineno}: {what}: {line.strip()[:100]}")
    assert problems == [], "\n".join(problems)


def test_arrays_with_pickled_objects_are_never_loaded(tmp_path, caplog):
    from core.store.folders import load_npz

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "features.npz"
    np.savez(path, train=np.array([Payload()], dtype=object))
    assert load_npz(path) is None  # refused (allow_pickle=False), reported and removed
    assert not (tmp_path / "pwned").exists() and not path.exists()
    assert "corrupt" in caplog.text
