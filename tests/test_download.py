"""Downloading the 256 px originals (core.data.download) from a local HTTP server: checks, refusals,
progress, interruptions. No test reaches the internet: every URL is 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.data import download as dl
from core.data.arrays import scan_dataset
from core.data.download import download, download_data, download_original, split_archive
from core.errors import DatasetError
from tests.conftest import make_image

REPO = Path(__file__).resolve().parent.parent
PREFIXES = ("coast", "forest", "highway", "insidecity", "mountain", "opencountry", "street", "tallbuilding")
MIT_CLASSES = {"coast", "forest", "highway", "inside_city", "mountain", "Opencountry", "street", "tallbuilding"}


def scene_zip(per_class: int = 10, extra: int = 0) -> bytes:
    """An archive in the 8-scene naming (``<class>_<name>.jpg`` in one folder) of tiny JPEGs."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for prefix in PREFIXES:
            for i in range(per_class + (extra if prefix == "coast" else 0)):
                img = io.BytesIO()
                make_image("coast", i, size=16).save(img, format="JPEG")
                zf.writestr(f"spatial_envelope_256x256_static_8outdoorcategories/{prefix}_img{i}.jpg", img.getvalue())
        zf.writestr("spatial_envelope_256x256_static_8outdoorcategories/README.txt", "x")
    return buf.getvalue()


GOOD = scene_zip()
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


class Handler(BaseHTTPRequestHandler):
    """Routes: path -> (status, body, declared Content-Length or None, seconds to stall after half)."""

    routes: dict[str, tuple[int, bytes, int | None, float]] = {}
    hits: list[str] = []
    half_sent = threading.Event()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        Handler.hits.append(self.path)
        status, body, length, stall = self.routes.get(self.path, (404, b"not found", None, 0.0))
        try:
            self.send_response(status)
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            if stall:
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                Handler.half_sent.set()
                time.sleep(stall)
            self.wfile.write(body[len(body) // 2 :] if stall else body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    srv.block_on_close = False
    wrong = scene_zip(extra=1)
    Handler.routes = {
        "/good.zip": (200, GOOD, len(GOOD), 0.0),
        "/nolength.zip": (200, GOOD, None, 0.0),
        "/truncated.zip": (200, GOOD[: len(GOOD) // 2], len(GOOD), 0.0),  # declares more than it sends
        "/cutzip.zip": (200, GOOD[: len(GOOD) // 2], len(GOOD) // 2, 0.0),  # honest length, broken zip
        "/wrongcount.zip": (200, wrong, len(wrong), 0.0),
        "/notazip.zip": (200, b"<html>maintenance</html>", 24, 0.0),
        "/slow.zip": (200, GOOD, len(GOOD), 30.0),
    }
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """A proxy in the environment must not see the local server's traffic (or reach the internet)."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def entries(folder: Path) -> list[str]:
    """What is in ``folder`` besides lock files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock")) if folder.exists() else []


def nothing_left(parent: Path, dest: Path) -> None:
    assert not dest.exists() and entries(parent) == []


def test_download_checks_and_splits_into_a_new_folder(server, tmp_path):
    dest = tmp_path / "data" / "mit8"
    out = download_original(dest, url=f"{server}/good.zip", expected_images=80, sha256=GOOD_SHA)
    assert out == dest.resolve()
    info = scan_dataset(out)
    assert set(info.classes) == MIT_CLASSES and not info.skipped
    counts = info.counts()
    assert all(n == 3 for n in counts["test"].values()) and all(n == 7 for n in counts["train"].values())
    assert entries(tmp_path / "data") == ["mit8"] and not list(out.rglob("*.part"))


def test_without_content_length_the_zip_checks_still_apply(server, tmp_path):
    download_original(tmp_path / "a", url=f"{server}/nolength.zip", expected_images=80)
    with pytest.raises(DatasetError, match="not a readable zip"):
        download_original(tmp_path / "b", url=f"{server}/notazip.zip", expected_images=80)


@pytest.mark.parametrize(
    "route, kw, match",
    [
        ("/truncated.zip", {}, r"stopped at \d+ of \d+ bytes \(connection cut\)"),
        ("/cutzip.zip", {}, r"cutzip.zip is not a readable zip file .*download it again"),
        ("/wrongcount.zip", {}, r"holds 81 scene images .*expected 80 in 8 classes"),
        ("/good.zip", {"sha256": "0" * 64}, r"has sha256 [0-9a-f]{12}\.\.\., expected 000000000000"),
        ("/missing.zip", {}, r"the server answered 404 .*the bundled 64 px copy stays in use"),
    ],
)
def test_bad_downloads_are_one_sentence_and_leave_nothing(server, tmp_path, route, kw, match):
    dest = tmp_path / "data" / "mit8"
    with pytest.raises(DatasetError, match=match) as err:
        download_original(dest, url=f"{server}{route}", expected_images=80, **kw)
    assert "\n" not in str(err.value)
    nothing_left(tmp_path / "data", dest)


def test_no_network_says_it_needs_the_internet(tmp_path):
    with pytest.raises(DatasetError, match=r"Could not download .*needs the internet.*bundled 64 px copy stays in use"):
        download_original(tmp_path / "d", url="http://127.0.0.1:9/x.zip", timeout=5)
    with pytest.raises(DatasetError, match="not an http"):
        download_original(tmp_path / "d", url="file:///etc/passwd")
    nothing_left(tmp_path, tmp_path / "d")


def test_progress_reports_bytes_total_speed_and_time_left(server, tmp_path):
    events: list[dict] = []
    download_original(tmp_path / "d", url=f"{server}/good.zip", expected_images=80, progress=events.append)
    assert events and all(e["event"] == "download" for e in events)
    assert [e["bytes"] for e in events] == sorted(e["bytes"] for e in events)
    last = events[-1]
    assert last["bytes"] == last["total"] == len(GOOD) and last["speed_bps"] > 0 and last["eta_s"] == 0


def test_raising_from_progress_cancels_and_leaves_nothing(server, tmp_path):
    def cancel(event: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download_original(tmp_path / "data" / "d", url=f"{server}/good.zip", expected_images=80, progress=cancel)
    nothing_left(tmp_path / "data", tmp_path / "data" / "d")


def test_a_non_empty_destination_is_refused_before_downloading(server, tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep")
    before = len(Handler.hits)
    with pytest.raises(DatasetError, match="already exists and is not empty; choose a new folder"):
        download_original(dest, url=f"{server}/good.zip", expected_images=80)
    assert len(Handler.hits) == before and (dest / "mine.txt").read_text() == "keep"


def test_download_to_a_file_is_all_or_nothing(server, tmp_path):
    assert download(f"{server}/good.zip", tmp_path / "a.zip", sha256=GOOD_SHA).read_bytes() == GOOD
    with pytest.raises(DatasetError, match="connection cut"):
        download(f"{server}/truncated.zip", tmp_path / "b.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_sigkill_during_the_transfer_leaves_nothing_that_looks_complete(server, tmp_path):
    dest = tmp_path / "data" / "mit8"
    Handler.half_sent.clear()
    code = f"from core.data.download import download_original; download_original({str(dest)!r}, url={server + '/slow.zip'!r}, expected_images=80)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "no_proxy": "127.0.0.1"})
    try:
        assert Handler.half_sent.wait(60), "the download never started"
        deadline = time.monotonic() + 30
        while not list((tmp_path / "data").glob(".import-*/.download.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert not dest.exists() and not list(tmp_path.rglob("*.zip"))
    (stale,) = entries(tmp_path / "data")
    assert stale.startswith(".import-") and (tmp_path / "data" / stale / ".download.part").exists()
    download_original(dest, url=f"{server}/good.zip", expected_images=80)  # the next one cleans up
    assert entries(tmp_path / "data") == ["mit8"]


# -- split_archive and download_data (the CLI's `download-data`) --------------------------------------
def test_split_archive_unpacks_and_splits_reproducibly(tmp_path):
    (tmp_path / "scenes.zip").write_bytes(GOOD)
    counts = split_archive(tmp_path / "scenes.zip", tmp_path / "data", seed=0, expected=80)
    assert set(counts["train"]) == MIT_CLASSES
    assert all(v == 3 for v in counts["test"].values()) and all(v == 7 for v in counts["train"].values())
    assert split_archive(tmp_path / "scenes.zip", tmp_path / "again", seed=0, expected=80) == counts
    split_archive(tmp_path / "scenes.zip", tmp_path / "other", seed=1, expected=80)
    names = lambda root: sorted(p.name for p in (tmp_path / root / "test" / "coast").iterdir())  # noqa: E731
    assert names("data") == names("again") != names("other")
    assert entries(tmp_path) == ["again", "data", "other", "scenes.zip"]


def test_split_archive_refuses_wrong_archives(tmp_path):
    (tmp_path / "scenes.zip").write_bytes(GOOD)
    with pytest.raises(DatasetError, match="expected 2688"):
        split_archive(tmp_path / "scenes.zip", tmp_path / "data")
    (tmp_path / "junk.zip").write_text("no zip")
    with pytest.raises(DatasetError, match="not a readable zip"):
        split_archive(tmp_path / "junk.zip", tmp_path / "d")
    assert entries(tmp_path) == ["junk.zip", "scenes.zip"]


def test_cli_download_data_offline_is_one_sentence(tmp_path):
    proxy = "http://127.0.0.1:9"  # a closed local port: the real address is never reached
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.update({k: proxy for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY")})
    env.pop("no_proxy", None), env.pop("NO_PROXY", None)
    r = subprocess.run([sys.executable, "-m", "core", "download-data", "--to", str(tmp_path / "d")],
                       cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("scenelab: Could not download") and "bundled 64 px copy stays in use" in last
    assert not (tmp_path / "d").exists()


def test_cli_download_data_with_a_zip(tmp_path):
    (tmp_path / "scenes.zip").write_bytes(scene_zip(per_class=336))  # 2688 images, as the real archive
    assert sum(sum(c.values()) for c in download_data(tmp_path / "d", tmp_path / "scenes.zip").values()) == 2688
    assert dl.EXPECTED_IMAGES == 2688
