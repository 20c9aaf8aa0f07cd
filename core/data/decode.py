"""Decoding one image file or upload to RGB uint8, whatever its format or mode; one reason when it cannot be.

Only JPEG, PNG, BMP, GIF, WEBP and TIFF are decoded (Pillow's other plugins are never reached, even for a
file named ``.jpg``); images over 40 megapixels are refused from their header (decompression bombs
included); 16-bit and float images are converted a band of rows at a time (bounded memory).
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DatasetError, first_line, os_error_phrase

logger = logging.getLogger(__name__)

MAX_PIXELS = 40_000_000  # over 40 megapixels is refused (decompression bombs included)

# Pillow raises DecompressionBombError past 2x this and only warns below; refuse both.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageDecodeError(DatasetError):
    """One image cannot be decoded; the message says why."""


# Only these Pillow plugins may decode anything: an upload cannot reach EPS (Ghostscript), PSD, ICNS,
# FITS or any other of Pillow's less travelled decoders (camera MPO files open through JPEG).
DECODE_FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
FORMATS_HINT = "JPEG, PNG, BMP, GIF, WEBP or TIFF expected"
_ROWS_PER_CHUNK = 256  # high-bit-depth images are converted a band of rows at a time (bounded memory)

ImageSource = str | os.PathLike[str] | bytes | bytearray | memoryview | BinaryIO


def decode_image(source: ImageSource, size: int | None = None) -> np.ndarray:
    """Decode any supported image to an RGB uint8 array, resized to ``size`` x ``size`` if given.

    ``source`` is a path, or the bytes (or a binary file object) of an upload: uploads are decoded
    in memory and never written to disk. Handles JPEG, PNG, BMP, GIF (first frame), WEBP, TIFF in
    RGB, greyscale, RGBA, palette, CMYK and 16-bit, and applies EXIF orientation. Anything else
    (another format, a corrupt or truncated file, over 40 megapixels) raises
    :class:`ImageDecodeError` with a one-line reason; no other exception escapes.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(source, (bytes, bytearray, memoryview)):
                fp: Any = io.BytesIO(bytes(source))
            else:
                fp = source
            with Image.open(fp, formats=DECODE_FORMATS) as img:
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise ImageDecodeError(
                        f"image is {w}x{h} ({w * h / 1e6:.0f} megapixels), over the "
                        f"{MAX_PIXELS // 1_000_000}-megapixel limit"
                    )
                if w < 1 or h < 1:
                    raise ImageDecodeError("image has no pixels")
                img.seek(0)
                img.load()
                ImageOps.exif_transpose(img, in_place=True)  # no copy when there is nothing to turn
                out = _to_rgb(img)
                if size is not None:
                    out = out.resize((size, size), Image.Resampling.BILINEAR)
                arr = np.asarray(out, dtype=np.uint8)
                if arr.ndim != 3 or arr.shape[2] != 3:
                    raise ImageDecodeError(f"decoded to an unexpected shape {arr.shape}")
                return arr.copy()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageDecodeError(
            f"image is too large: over the {MAX_PIXELS // 1_000_000}-megapixel limit (decompression bomb guard)"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not a recognised image format ({FORMATS_HINT})") from None
    except FileNotFoundError:
        raise ImageDecodeError("file not found") from None
    except IsADirectoryError:
        raise ImageDecodeError("is a folder, not an image file") from None
    except MemoryError:
        raise ImageDecodeError("too large to decode in the memory available") from None
    except OSError as exc:
        if exc.errno is not None:  # the file system refused (permission, I/O error), not the decoder
            raise ImageDecodeError(f"cannot be read ({os_error_phrase(exc, writing=False)})") from None
        raise ImageDecodeError(f"corrupt or truncated image ({first_line(exc)})") from None
    except (ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError, struct.error, zlib.error) as exc:
        raise ImageDecodeError(f"corrupt or truncated image ({first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a decoder bug on a hostile file is still a skipped file
        logger.debug("Unexpected %s while decoding", type(exc).__name__, exc_info=True)
        raise ImageDecodeError(f"corrupt or unsupported image ({type(exc).__name__}: {first_line(exc)})") from None


def _to_uint8_rows(arr: np.ndarray, offset: float, divisor: float, scale: float) -> np.ndarray:
    """``clip((arr - offset) / divisor * scale, 0, 255)`` as uint8, computed in float64 a band of
    rows at a time, so a 40-megapixel 16-bit image needs tens of megabytes, not gigabytes."""
    out = np.empty(arr.shape, dtype=np.uint8)
    for start in range(0, arr.shape[0], _ROWS_PER_CHUNK):
        band = arr[start : start + _ROWS_PER_CHUNK].astype(np.float64)
        if offset:
            band -= offset
        if divisor != 1.0:
            band /= divisor
        band *= scale
        np.nan_to_num(band, copy=False)
        np.clip(band, 0, 255, out=band)
        out[start : start + _ROWS_PER_CHUNK] = band.astype(np.uint8)
    return out


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img)
        top = float(arr.max()) if arr.size else 1.0
        scale = 255.0 / (65535.0 if top > 255 else max(top, 1.0))
        img = Image.fromarray(_to_uint8_rows(arr, 0.0, 1.0, scale), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img)
        finite = np.isfinite(arr)
        lo = float(arr[finite].min()) if finite.any() else 0.0
        hi = float(arr[finite].max()) if finite.any() else 0.0
        del finite
        if hi > lo:
            img = Image.fromarray(_to_uint8_rows(arr, lo, hi - lo, 255.0), mode="L")
        else:
            img = Image.new("L", img.size, 0)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        if img.mode != "RGBA":
            img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


UPLOAD_TYPES = ("jpg", "jpeg", "png", "bmp", "gif", "webp")


def decode_upload(data: bytes, size: int, name: str = "The uploaded file") -> np.ndarray:
    """Decode an uploaded file to RGB uint8 (size, size, 3); one sentence on failure.

    Raises :class:`ImageDecodeError` (a :class:`~core.errors.SceneLabError`) for non-images, corrupt
    files and images over 40 megapixels. The bytes are decoded in memory, never written to disk.
    """
    try:
        return decode_image(bytes(data), size)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{name} could not be used as an image: {exc}; try another photo.") from None
