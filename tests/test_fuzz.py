"""Fuzzing the image decoder and the upload path with hundreds of seeded bad files.

Every case must end as an RGB uint8 array or an :class:`ImageDecodeError` with a one-line reason;
none may crash the process, take 5 s or grow it by 1 GiB. The batch runs in a child process with
an address-space limit (a runaway allocation fails there instead of taking the machine) and its
peak RSS and per-case times are measured in that child. The same files then go through
``scan_dataset`` + ``decode_dataset`` as a user's dataset folder.

``SCENELAB_FUZZ_SEED`` picks another seed; ``SCENELAB_FUZZ_SCALE=N`` multiplies the mutations per
valid image (the ``slow`` test runs N=5).
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("SCENELAB_FUZZ_SEED", "20240505"))
CASE_LIMIT_S = 5.0
MEMORY_LIMIT_BYTES = 1 << 30  # peak RSS growth allowed over the child's baseline
GIB = 1 << 30


@dataclass
class Case:
    name: str
    data: bytes
    ext: str
    kind: str  # "valid", "mutant" or "junk"
    expect: str = ""  # for valid: "ok"; for some junk: a substring of the skip reason
    shape: tuple[int, int] | None = None  # (h, w) a valid image must decode to


# -- generators ------------------------------------------------------------------------------------
def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(rng: np.random.Generator, w: int, h: int, mode: str = "RGB") -> Image.Image:
    if mode == "RGB":
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "RGBA":
        return Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8))
    return Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF)


def png_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    """A real, valid greyscale PNG of ``width`` x ``height`` zeros (100 MP by default, ~100 KB)."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts)) + _png_chunk(b"IEND", b"")


def _exif_jpeg(rng: np.random.Generator, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(_noise(rng, 24, 12), "JPEG", exif=exif.tobytes())


def valid_bases(rng: np.random.Generator) -> list[Case]:
    """Valid images of every kind the decoder promises to read (each must decode)."""
    cases: list[Case] = []

    def add(name: str, data: bytes, ext: str, shape: tuple[int, int]) -> None:
        cases.append(Case(name, data, ext, "valid", "ok", shape))

    rgb = _noise(rng, 40, 30)
    add("jpeg_rgb", _save(rgb, "JPEG", quality=90), ".jpg", (30, 40))
    add("jpeg_grey", _save(rgb.convert("L"), "JPEG"), ".jpg", (30, 40))
    add("jpeg_progressive", _save(rgb, "JPEG", progressive=True), ".jpeg", (30, 40))
    add("jpeg_cmyk", _save(rgb.convert("CMYK"), "JPEG"), ".jpg", (30, 40))
    for o in range(2, 9):  # EXIF orientations 5-8 turn the image by 90 degrees
        add(f"jpeg_exif_orientation_{o}", _exif_jpeg(rng, o), ".jpg", (24, 12) if o >= 5 else (12, 24))
    add("jpeg_1x1", _save(_noise(rng, 1, 1), "JPEG"), ".jpg", (1, 1))
    add("png_rgb", _save(rgb, "PNG"), ".png", (30, 40))
    add("png_rgba", _save(_noise(rng, 40, 30, "RGBA"), "PNG"), ".png", (30, 40))
    add("png_la", _save(rgb.convert("LA"), "PNG"), ".png", (30, 40))
    add("png_palette", _save(rgb.convert("P"), "PNG"), ".png", (30, 40))
    pal = rgb.convert("P")
    pal.info["transparency"] = 0
    add("png_palette_transparent", _save(pal, "PNG", transparency=0), ".png", (30, 40))
    add("png_interlaced", _save(rgb, "PNG", interlace=1), ".png", (30, 40))  # Adam7 (Pillow writes it when asked)
    add("png_1bit", _save(rgb.convert("1"), "PNG"), ".png", (30, 40))
    add("png_16bit", _save(Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)), "PNG"), ".png", (30, 40))
    add("png_1x1", _save(_noise(rng, 1, 1), "PNG"), ".png", (1, 1))
    frames = [_noise(rng, 20, 16) for _ in range(3)]
    add("gif_animated", _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0), ".gif", (16, 20))
    add("png_animated_apng", _save(frames[0], "PNG", save_all=True, append_images=frames[1:]), ".png", (16, 20))
    add("gif_1x1", _save(_noise(rng, 1, 1).convert("P"), "GIF"), ".gif", (1, 1))
    add("bmp_rgb", _save(rgb, "BMP"), ".bmp", (30, 40))
    add("bmp_palette", _save(rgb.convert("P"), "BMP"), ".bmp", (30, 40))
    add("webp_rgb", _save(rgb, "WEBP"), ".webp", (30, 40))
    add("webp_animated", _save(frames[0], "WEBP", save_all=True, append_images=frames[1:]), ".webp", (16, 20))
    add("tiff_rgb", _save(rgb, "TIFF"), ".tif", (30, 40))
    add("tiff_cmyk", _save(rgb.convert("CMYK"), "TIFF"), ".tiff", (30, 40))
    add("tiff_16bit", _save(Image.fromarray(rng.integers(0, 65536, (30, 40), dtype=np.uint16)), "TIFF"), ".tif", (30, 40))
    add("tiff_float", _save(Image.fromarray(rng.normal(0, 1, (30, 40)).astype(np.float32)), "TIFF"), ".tif", (30, 40))
    add("tiff_multipage", _save(frames[0], "TIFF", save_all=True, append_images=frames[1:]), ".tif", (16, 20))
    add("tiff_lzw", _save(rgb, "TIFF", compression="tiff_lzw"), ".tif", (30, 40))
    return cases


def large_valid() -> list[Case]:
    """The largest images still allowed (36 megapixels): decoded within the time and memory bounds."""
    return [
        Case("png_36mp_rgba", _save(Image.new("RGBA", (6000, 6000), (10, 20, 30, 128)), "PNG", compress_level=1), ".png", "valid", "ok", (6000, 6000)),
        Case("png_36mp_16bit", _save(Image.new("I;16", (6000, 6000), 50_000), "PNG", compress_level=1), ".png", "valid", "ok", (6000, 6000)),
    ]


def mutants(base: Case, rng: random.Random, scale: int = 1) -> list[Case]:
    """Truncations, bit flips, wrong headers and splices of one valid file."""
    data = base.data
    out: list[Case] = []

    def add(tag: str, payload: bytes) -> None:
        out.append(Case(f"{base.name}__{tag}", payload, base.ext, "mutant"))

    for i in range(2 * scale):
        cut = rng.randrange(1, max(2, len(data)))
        add(f"truncated{i}_at{cut}", data[:cut])
    for i in range(2 * scale):
        buf = bytearray(data)
        for _ in range(rng.randint(1, 24)):
            pos = rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        add(f"bitflip{i}", bytes(buf))
    wrong = rng.choice([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP", b"%PDF-1.4"])
    add("wrong_header", wrong + data[len(wrong):])
    pos = rng.randrange(len(data))
    add("spliced", data[:pos] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + data[pos:])
    if scale > 1:
        add("header_only", data[: min(len(data), 64)])
    return out


def junk(rng: random.Random) -> list[Case]:
    """Files that are not images at all, or whose headers lie about their size."""
    cases = [
        Case("zero_bytes", b"", ".jpg", "junk", "not a recognised"),
        Case("text", b"hello, I am a text file\n" * 10, ".jpg", "junk", "not a recognised"),
        Case("html", b"<!DOCTYPE html><html><body><img src=x></body></html>", ".jpg", "junk", "not a recognised"),
        Case("json", b'{"image": "not really"}', ".png", "junk", "not a recognised"),
        Case("random_1k", bytes(rng.randrange(256) for _ in range(1024)), ".jpg", "junk"),
        Case("pdf", b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", ".jpg", "junk", "not a recognised"),
        Case("zip", b"PK\x03\x04" + b"\x00" * 100, ".png", "junk", "not a recognised"),
        # Pillow's EPS plugin would run Ghostscript: refused before any plugin but the six is tried
        Case("eps_ghostscript", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", ".jpg", "junk", "not a recognised"),
        Case("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', ".png", "junk", "not a recognised"),
        Case("ppm_other_format", _save(Image.new("RGB", (8, 8)), "PPM"), ".jpg", "junk", "not a recognised"),
        Case("ico_other_format", _save(Image.new("RGB", (16, 16)), "ICO"), ".png", "junk", "not a recognised"),
        Case("png_100mp_bomb", png_bomb(), ".png", "junk", "megapixel"),
        Case("png_ihdr_claims_4gp", b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 65535, 65535, 8, 2, 0, 0, 0)) + _png_chunk(b"IEND", b""), ".png", "junk", "megapixel|too large"),
        Case("gif_claims_65535_square", b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b",\x00\x00\x00\x00" + struct.pack("<HH", 65535, 65535) + b"\x00\x02\x02\x44\x01\x00;", ".gif", "junk", "megapixel|too large"),
        Case("jpeg_sof_claims_65000_square", b"\xff\xd8\xff\xc0\x00\x11\x08" + struct.pack(">HH", 65000, 65000) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01\xff\xd9", ".jpg", "junk", "megapixel|too large"),
        Case("bmp_claims_30000_square", b"BM" + struct.pack("<IHHI", 1000, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, 30000, 30000, 1, 24, 0, 0, 0, 0, 0, 0), ".bmp", "junk", "megapixel|too large"),
        Case("png_signature_only", b"\x89PNG\r\n\x1a\n", ".png", "junk"),
        Case("jpeg_soi_only", b"\xff\xd8\xff", ".jpg", "junk"),
        Case("gif_header_only", b"GIF89a", ".gif", "junk"),
        Case("tiff_header_only", b"II*\x00\x08\x00\x00\x00", ".tif", "junk"),
        Case("webp_header_only", b"RIFF\x10\x00\x00\x00WEBPVP8 ", ".webp", "junk"),
        Case("png_zero_width", b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0)) + _png_chunk(b"IEND", b""), ".png", "junk"),
    ]
    # a PNG whose zTXt chunk inflates to 64 MB (text bombs are capped by Pillow)
    ztxt = b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9)
    good = _save(Image.new("RGB", (4, 4)), "PNG")
    cases.append(Case("png_ztxt_bomb", good[:33] + _png_chunk(b"zTXt", ztxt) + good[33:], ".png", "junk"))
    return cases


def build_cases(seed: int = SEED, scale: int = 1, large: bool = True) -> list[Case]:
    nrng = np.random.default_rng(seed)
    rng = random.Random(seed)
    bases = valid_bases(nrng)
    cases = list(bases)
    for base in bases:
        cases.extend(mutants(base, rng, scale))
    cases.extend(junk(rng))
    if large:
        cases.extend(large_valid())
    return cases


# -- the child process -------------------------------------------------------------------------------
CHILD = r"""
import json, os, resource, sys, time, traceback
sys.path.insert(0, os.getcwd())

def vm_bytes():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0

from core.data.arrays import ImageDecodeError, decode_dataset, decode_image, scan_dataset
import numpy as np
from PIL import Image
Image.init()
decode_image(open(sys.argv[3], "rb").read(), 8)  # warm every code path before the baseline

base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
headroom = int(sys.argv[4])
resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + headroom, resource.RLIM_INFINITY))

manifest = json.load(open(sys.argv[1]))
out = {"base_rss": base_rss, "cases": [], "dataset": None}
progress = open(sys.argv[2] + ".progress", "w")

def outcome(fn):
    t0 = time.monotonic()
    try:
        arr = fn()
        res = {"result": "ok", "shape": list(arr.shape), "dtype": str(arr.dtype)}
    except ImageDecodeError as exc:
        res = {"result": "skip", "reason": str(exc)}
    except BaseException as exc:  # a crash: recorded, asserted against by the parent
        res = {"result": "crash", "reason": "".join(traceback.format_exception(exc))[-2000:]}
    res["seconds"] = time.monotonic() - t0
    res["rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    return res

for case in manifest["cases"]:
    progress.write(case["name"] + "\n"); progress.flush()
    data = open(case["path"], "rb").read()
    out["cases"].append({
        "name": case["name"],
        "upload": outcome(lambda: decode_image(data, size=32)),
        "path": outcome(lambda: decode_image(case["path"])),
    })

progress.write("<dataset>\n"); progress.flush()
t0 = time.monotonic()
try:
    info = scan_dataset(manifest["dataset"])
    ds = decode_dataset(info, 32, manifest["cache"])
    again = decode_dataset(info, 32, manifest["cache"])
    out["dataset"] = {
        "result": "ok",
        "classes": ds.classes,
        "decoded": ds.train_paths + ds.test_paths,
        "skipped": [[s.path, s.reason] for s in ds.skipped],
        "shape": list(ds.x_train.shape[1:]),
        "dtype": str(ds.x_train.dtype),
        "cache_same": bool(np.array_equal(again.x_train, ds.x_train) and again.skipped == ds.skipped),
    }
except BaseException as exc:
    out["dataset"] = {"result": "crash", "reason": "".join(traceback.format_exception(exc))[-2000:]}
out["dataset"]["seconds"] = time.monotonic() - t0
out["peak_rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
json.dump(out, open(sys.argv[2], "w"))
"""


def run_fuzz(tmp_path: Path, cases: list[Case], timeout: float) -> dict:
    """Write every case to disk (and into a dataset folder), decode them in a limited child."""
    files = tmp_path / "cases"
    files.mkdir(parents=True)
    ds = tmp_path / "dataset"
    good = _save(Image.new("RGB", (16, 16), (90, 120, 30)), "JPEG")
    for split in ("train", "test"):
        for cls in ("alpha", "beta"):
            (ds / split / cls).mkdir(parents=True)
            for i in range(2):  # every class keeps decodable images, so the dataset stays usable
                (ds / split / cls / f"good_{i}.jpg").write_bytes(good)
    manifest = {"cases": [], "dataset": str(ds), "cache": str(tmp_path / "cache")}
    for i, case in enumerate(cases):
        name = f"{i:04d}_{case.name}{case.ext}"
        path = files / name
        path.write_bytes(case.data)
        manifest["cases"].append({"name": case.name, "path": str(path)})
        split, cls = ("train", "test")[i % 2], ("alpha", "beta")[(i // 2) % 2]
        (ds / split / cls / name).write_bytes(case.data)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    warm = tmp_path / "warm.png"
    warm.write_bytes(_save(Image.new("RGB", (8, 8)), "PNG"))
    result = tmp_path / "result.json"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path / "manifest.json"), str(result), str(warm), str(2 * GIB)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        progress = (result.with_name(result.name + ".progress")).read_text().splitlines()
        pytest.fail(f"the fuzz child hung; last case started: {progress[-1] if progress else 'none'}")
    assert proc.returncode == 0, f"the fuzz child died (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(result.read_text())


def check(cases: list[Case], out: dict) -> dict:
    """Assert every promise; return the figures (for the report)."""
    by_name = {c.name: c for c in cases}
    max_s = 0.0
    for rec in out["cases"]:
        case = by_name[rec["name"]]
        for how in ("upload", "path"):
            res = rec[how]
            assert res["result"] != "crash", f"{case.name} ({how}) crashed: {res['reason']}"
            assert res["seconds"] < CASE_LIMIT_S, f"{case.name} ({how}) took {res['seconds']:.1f} s"
            max_s = max(max_s, res["seconds"])
            if res["result"] == "ok":
                assert res["dtype"] == "uint8" and len(res["shape"]) == 3 and res["shape"][2] == 3, (case.name, res)
                if how == "upload":
                    assert res["shape"] == [32, 32, 3], (case.name, res)
                elif case.shape is not None:
                    assert tuple(res["shape"][:2]) == case.shape, (case.name, res["shape"], case.shape)
            else:
                reason = res["reason"]
                assert reason and "\n" not in reason and len(reason) < 300, (case.name, reason)
                assert "Traceback" not in reason
        # the upload (bytes) and the path give the same verdict
        assert rec["upload"]["result"] == rec["path"]["result"], (case.name, rec)
        if case.expect == "ok":
            assert rec["path"]["result"] == "ok", f"valid {case.name} was refused: {rec['path'].get('reason')}"
        elif case.expect:
            import re

            assert rec["path"]["result"] == "skip" and re.search(case.expect, rec["path"]["reason"]), (case.name, rec["path"])
    assert out["peak_rss_growth"] < MEMORY_LIMIT_BYTES, f"peak RSS grew by {out['peak_rss_growth'] / GIB:.2f} GiB"

    ds = out["dataset"]
    assert ds["result"] == "ok", ds.get("reason")
    assert ds["shape"] == [32, 32, 3] and ds["dtype"] == "uint8"
    assert ds["cache_same"], "the decoded-image cache gave other arrays or another skip list"
    decoded = {Path(p).name for p in ds["decoded"]}
    skipped = {Path(p).name: r for p, r in ds["skipped"]}
    assert not decoded & set(skipped)
    verdicts = {f"{i:04d}_{c.name}{c.ext}": rec["upload"]["result"] for i, (c, rec) in enumerate(zip(cases, out["cases"], strict=True))}
    for name, verdict in verdicts.items():
        if verdict == "ok":
            assert name in decoded, f"{name} decodes alone but not in the dataset"
        else:
            assert name in skipped and skipped[name], f"{name} is neither decoded nor listed as skipped"
    return {
        "cases": len(out["cases"]),
        "bad": sum(1 for c in cases if c.kind != "valid"),
        "decoded": sum(1 for r in out["cases"] if r["path"]["result"] == "ok"),
        "skipped": sum(1 for r in out["cases"] if r["path"]["result"] == "skip"),
        "max_case_s": round(max_s, 3),
        "peak_rss_growth_mib": round(out["peak_rss_growth"] / (1 << 20), 1),
        "dataset_s": round(ds["seconds"], 2),
    }


def test_generated_bad_files_never_crash_hang_or_blow_memory(tmp_path):
    cases = build_cases(SEED)
    assert sum(1 for c in cases if c.kind != "valid") >= 200
    assert len({c.name for c in cases}) == len(cases)
    out = run_fuzz(tmp_path, cases, timeout=240)
    figures = check(cases, out)
    print("fuzz figures:", json.dumps(figures))
    # the mutations really were bad: a fair share is refused, and the valid ones all decoded
    assert figures["skipped"] >= 100


def test_generation_is_seeded():
    a, b = build_cases(7, large=False), build_cases(7, large=False)
    assert [(c.name, c.data) for c in a] == [(c.name, c.data) for c in b]
    assert [c.data for c in build_cases(8, large=False)] != [c.data for c in a]


@pytest.mark.slow
def test_fuzz_more_seeds_and_mutations(tmp_path):
    """Three more seeds at five times the mutations (~1300 bad files per seed)."""
    for seed in (SEED + 1, SEED + 2, SEED + 3):
        cases = build_cases(seed, scale=5, large=False)
        out = run_fuzz(tmp_path / str(seed), cases, timeout=600)
        print(f"fuzz seed {seed}:", json.dumps(check(cases, out)))
