"""Safe image decoding: byte limit, pixel limit, reduced JPEG decoding, known formats only, clear errors.

Every failure is an :class:`~retrieval.errors.ImageError`; peak memory stays within a small
multiple of ``max_pixels`` x 4 bytes whatever the file declares (``tests/retrieval/test_hostile_images.py``).

Example:
    >>> from retrieval.images import ImageLimits, decode_image
    >>> img = decode_image(open("photo.jpg", "rb").read(), ImageLimits())  # doctest: +SKIP
"""

from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path
from typing import cast

from PIL import Image, ImageOps, UnidentifiedImageError
from PIL.JpegImagePlugin import JpegImageFile
from pydantic import BaseModel, Field

from retrieval.errors import ImageError, ImageTooLargeError, UnsupportedImageError

__all__ = ["ImageLimits", "decode_image", "read_image_file"]

# The Pillow plugins tried (JPEG covers MPO, the multi-picture JPEG of phones). Photos need no
# others, and the rest are attack surface: EPS would run Ghostscript, FITS/PSD/ICNS parsers are rarely fuzzed.
_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF")

# What Pillow raises, besides OSError, on malformed bytes (found by fuzzing every allowed format):
# none of them is a bug of the caller's, all of them are a corrupt image.
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, RuntimeError, struct.error)


class ImageLimits(BaseModel):
    """Limits applied to every image Tandem decodes (catalogue photos and buyers' uploads)."""

    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="Largest encoded file accepted.")
    max_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Largest width*height decoded in full; baseline JPEGs above it are decoded reduced (DCT),"
        " progressive JPEGs and other formats above it are refused.",
    )
    hard_max_pixels: int = Field(
        default=200_000_000,
        gt=0,
        description="Declared size above which an image is refused outright (decompression bomb).",
    )
    target_side: int = Field(
        default=256,
        gt=0,
        description="Encoders need small inputs: JPEG decoding may reduce to at least this side.",
    )


def read_image_file(path: Path, limits: ImageLimits) -> Image.Image:
    """Read and decode an image file under ``limits``."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    if size > limits.max_bytes:
        raise ImageTooLargeError(f"image {path} is {size} bytes, over the limit of {limits.max_bytes}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror or exc}") from exc
    return decode_image(data, limits, name=str(path))


def decode_image(data: bytes, limits: ImageLimits, *, name: str = "image") -> Image.Image:
    """Decode encoded image bytes to an upright RGB image, refusing bombs and non-images.

    The header is read first; a declared size above ``hard_max_pixels`` is refused
    before any pixel is decoded. JPEGs are decoded with ``draft`` (DCT scaling), so a
    90-megapixel photo costs a fraction of its full decode; progressive JPEGs (libjpeg
    holds all their coefficients) and every other format must fit ``max_pixels``.
    Animated images give their first frame; the EXIF orientation is applied.
    """
    if len(data) == 0:
        raise UnsupportedImageError(f"{name} is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"{name} is {len(data)} bytes, over the limit of {limits.max_bytes}")
    with warnings.catch_warnings():
        # PIL warns (then errors) on huge images, and warns on corrupt EXIF; we enforce our own limits.
        warnings.simplefilter("ignore")
        img = _open(data, limits, name)
        try:
            img.load()
            _make_upright(img)
            rgb = _to_rgb(img)
        except Image.DecompressionBombError as exc:
            raise ImageTooLargeError(f"{name} declares too many pixels") from exc
        except _CORRUPT as exc:
            raise ImageError(f"{name} is truncated or corrupt: {exc}") from exc
    return rgb


def _open(data: bytes, limits: ImageLimits, name: str) -> Image.Image:
    """Read the header only and check the declared size; JPEGs are set to decode reduced."""
    try:
        img = Image.open(io.BytesIO(data), formats=_FORMATS)
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError(
            f"{name} is not a supported image (JPEG, PNG, WebP, GIF, TIFF, BMP or AVIF)"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name} declares too many pixels") from exc
    except _CORRUPT as exc:
        raise ImageError(f"{name} cannot be read: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise UnsupportedImageError(f"{name} has an empty size {width}x{height}")
    if width * height > limits.hard_max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height} pixels, over the limit of {limits.hard_max_pixels}"
        )
    within = width * height <= limits.max_pixels
    if isinstance(img, JpegImageFile) and (within or not img.info.get("progressive")):
        # Reduce in the DCT (1/2, 1/4, 1/8) while staying above the encoder's input size.
        target = max(limits.target_side, 1)
        img.draft("RGB", (target, target))
        return img
    if within:
        return img
    kind = "progressive JPEG" if isinstance(img, JpegImageFile) else str(img.format)
    raise ImageTooLargeError(
        f"{name} is {width}x{height}, over the limit of {limits.max_pixels} pixels for {kind} images"
    )


def _make_upright(img: Image.Image) -> None:
    """Apply the EXIF orientation in place; an unreadable EXIF block leaves the image as stored."""
    try:
        ImageOps.exif_transpose(img, in_place=True)
    except (*_CORRUPT, TypeError):  # TypeError: re-writing a mistyped tag (found by fuzzing EXIF)
        pass


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode.startswith("I;16"):
        # 16-bit samples: keep the high byte (a plain convert clips everything above 255 to white).
        return img.convert("I").point(lambda v: v / 256).convert("RGB")
    if img.mode in ("I", "F"):
        # 32-bit samples have no fixed range: stretch what the image holds over 0..255.
        lo, hi = cast(tuple[float, float], img.getextrema())
        scale = 255 / (hi - lo) if hi > lo else 0.0
        return img.point(lambda v: (v - lo) * scale).convert("L").convert("RGB")
    return img.convert("RGB")
