from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from retrieval.errors import ImageError, ImageTooLargeError, UnsupportedImageError
from retrieval.images import ImageLimits, decode_image, read_image_file


def jpeg_bytes(size: tuple[int, int] = (60, 80), color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width``x``height`` but carries almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")
    )


def test_decodes_a_jpeg_to_rgb() -> None:
    img = decode_image(jpeg_bytes(), ImageLimits())
    assert img.mode == "RGB"
    assert img.size == (60, 80)


def test_grayscale_and_alpha_become_rgb() -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (5, 5), (1, 2, 3, 4)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), ImageLimits()).mode == "RGB"


def test_large_jpeg_is_decoded_in_reduced_mode() -> None:
    img = decode_image(jpeg_bytes((2400, 1600)), ImageLimits(target_side=256))
    # DCT scaling divides by up to 8 while staying >= target_side.
    assert img.size == (600, 400)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", UnsupportedImageError),
        (b"%PDF-1.4 definitely not an image", UnsupportedImageError),
        (jpeg_bytes()[:200], ImageError),  # truncated JPEG
        (png_header_claiming(30_000, 30_000), ImageTooLargeError),  # 900 MP declared
    ],
    ids=["empty", "not-an-image", "truncated", "bomb"],
)
def test_bad_images_are_clear_errors(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_image(data, ImageLimits())


def test_byte_limit() -> None:
    with pytest.raises(ImageTooLargeError, match="over the limit"):
        decode_image(jpeg_bytes(), ImageLimits(max_bytes=100))


def test_non_jpeg_pixel_limit() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (100, 100)).save(buf, format="PNG")
    with pytest.raises(ImageTooLargeError):
        decode_image(buf.getvalue(), ImageLimits(max_pixels=5000))


def test_read_image_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        read_image_file(tmp_path / "missing.jpg", ImageLimits())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"garbage")
    with pytest.raises(UnsupportedImageError):
        read_image_file(bad, ImageLimits())
