"""Safe image decoding: byte limit, pixel limit, reduced JPEG decoding, clear errors.

Example:
    >>> from retrieval.images import ImageLimits, decode_image
    >>> img = decode_image(open("photo.jpg", "rb").read(), ImageLimits())  # doctest: +SKIP
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from retrieval.errors import ImageError, ImageTooLargeError, UnsupportedImageError

__all__ = ["ImageLimits", "decode_image", "read_image_file"]


class ImageLimits(BaseModel):
    """Limits applied to every image Tandem decodes (catalogue photos and buyers' uploads)."""

    max_bytes: int = Field(default=20 * 1024 * 1024, gt=0, description="Largest encoded file accepted.")
    max_pixels: int = Field(
        default=40_000_000,
        gt=0,
        description="Largest width*height decoded in full; JPEGs above it are decoded in reduced mode.",
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
    """Decode encoded image bytes to an RGB image, refusing bombs and non-images.

    The header is read first; a declared size above ``hard_max_pixels`` is refused
    before any pixel is decoded. JPEGs are decoded with ``draft`` (DCT scaling), so a
    90-megapixel photo costs a fraction of its full decode.
    """
    if len(data) == 0:
        raise UnsupportedImageError(f"{name} is empty")
    if len(data) > limits.max_bytes:
        raise ImageTooLargeError(f"{name} is {len(data)} bytes, over the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            # PIL warns (then errors) on huge images; we enforce our own limit below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError(f"{name} is not a supported image (JPEG, PNG, WebP, ...)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name} declares too many pixels") from exc
    except OSError as exc:
        raise ImageError(f"{name} cannot be read: {exc}") from exc
    width, height = img.size
    if width <= 0 or height <= 0:
        raise UnsupportedImageError(f"{name} has an empty size {width}x{height}")
    if width * height > limits.hard_max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height} = {width * height} pixels, over the limit of {limits.hard_max_pixels}"
        )
    if img.format == "JPEG":
        # Reduce in the DCT (1/2, 1/4, 1/8) while staying above the encoder's input size.
        target = max(limits.target_side, 1)
        img.draft("RGB", (target, target))
    elif width * height > limits.max_pixels:
        raise ImageTooLargeError(
            f"{name} is {width}x{height}, over the limit of {limits.max_pixels} pixels for {img.format} images"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
            rgb = img.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{name} declares too many pixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name} is truncated or corrupt: {exc}") from exc
    return rgb
