"""Hostile images made in the test (bombs, odd modes, polyglots, non-rasters) and the peak-memory probe.

Every case says what a correct decoder does with it: refuse it with one of
:mod:`retrieval.errors`' image errors, or decode it to an RGB image the case checks.
The same table drives ``retrieval.images.decode_image`` and the HTTP API.

Example:
    >>> case = next(c for c in hostile_cases() if c.id == "svg-with-script")
    >>> case.refused is UnsupportedImageError
    True
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import io
import resource
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TypeVar

from PIL import Image

from retrieval.errors import ImageError, ImageTooLargeError, UnsupportedImageError
from retrieval.images import ImageLimits

__all__ = [
    "LIMITS",
    "HostileCase",
    "hostile_cases",
    "memory_bound",
    "peak_rss_growth",
]

T = TypeVar("T")

# Small enough that a bomb's cost is far above the bound, large enough for real photos.
LIMITS = ImageLimits(max_bytes=4 * 1024 * 1024, max_pixels=1_000_000, hard_max_pixels=200_000_000)

RED, GREEN, BLUE = (255, 0, 0), (0, 200, 0), (0, 0, 255)


def memory_bound(limits: ImageLimits, data: bytes, *, copies_of_input: int = 2) -> int:
    """The peak RSS growth decoding ``data`` may cost: 4 bytes x 4 per allowed pixel, plus the input's copies.

    An RGBA frame at the pixel limit is 4 bytes a pixel; decoder buffers, the RGB copy and an
    EXIF rotation fit in 4 such frames. Metadata (huge APP or text chunks) is held as bytes, so
    it is bounded by the input's size.
    """
    return 16 * limits.max_pixels + copies_of_input * len(data)


@cache
def _libc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    return trim if callable(trim) else None


def peak_rss_growth(fn: Callable[[], T]) -> tuple[T | BaseException, int]:
    """Run ``fn`` and return (its result or exception, the growth of peak RSS in bytes while it ran).

    The kernel's high-water mark is reset first (``/proc/self/clear_refs``), so the peak is this
    call's and not an earlier test's; freed heap is handed back to the OS first so the call cannot
    hide its cost in pages an earlier allocation left resident.
    """
    gc.collect()
    trim = _libc_trim()
    if trim is not None:
        trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    try:
        outcome: T | BaseException = fn()
    except Exception as exc:  # the caller checks which exception it was
        outcome = exc
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return outcome, (after - before) * 1024


def can_measure_peak() -> bool:
    """Whether this kernel lets a process reset its own peak RSS (Linux >= 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class HostileCase:
    """One hostile input: either ``refused`` (the error class) or ``check`` (what the decoded image must be)."""

    id: str
    make: Callable[[], bytes]
    refused: type[ImageError] | None = None
    check: Callable[[Image.Image], None] | None = None


# -- builders ----------------------------------------------------------------------------------------


def encode(img: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **options)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid greyscale PNG of ``width`` x ``height`` black pixels: kilobytes on disk, megapixels declared."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


@cache
def _deflate_bomb() -> bytes:
    """20 KB of deflate that inflates to 20 MB: 20 times Pillow's cap on one text chunk."""
    return zlib.compress(b"\x00" * 20_000_000, 9)


def png_with_chunk(kind: bytes, payload: bytes, *, before_idat: bool = True) -> bytes:
    """A 10x10 PNG carrying one extra ancillary chunk (text, ICC profile) before or after its pixels."""
    png = encode(Image.new("RGB", (10, 10), GREEN), "PNG")
    cut = 33 if before_idat else len(png) - 12  # after IHDR, or before IEND
    return png[:cut] + _chunk(kind, payload) + png[cut:]


def gif_declaring(screen: tuple[int, int], frame: tuple[int, int]) -> bytes:
    """A 35-byte GIF whose logical screen and first frame declare the given sizes (a GIF bomb)."""
    head = b"GIF89a" + struct.pack("<HHBBB", *screen, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, *frame, 0)
    return head + descriptor + b"\x02\x02\x44\x01\x00" + b";"


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (32, 24), colour) for colour in (RED, GREEN, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=40, loop=0)
    return buf.getvalue()


def animated_png() -> bytes:
    frames = [Image.new("RGB", (32, 24), colour) for colour in (RED, GREEN, BLUE)]
    buf = io.BytesIO()
    frames[0].save(buf, format="PNG", save_all=True, append_images=frames[1:], duration=40)
    return buf.getvalue()


def gray16(value: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new("I;16", size, value)


def tiff_rgb48(size: tuple[int, int], rgb16: tuple[int, int, int]) -> bytes:
    """An uncompressed 16-bit-per-channel RGB TIFF (Pillow cannot write one), little-endian."""
    width, height = size
    entries = [  # (tag, type, count, value): type 3 = SHORT, 4 = LONG
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 3, 0),  # BitsPerSample: three SHORTs, stored after the IFD
        (259, 3, 1, 1),  # no compression
        (262, 3, 1, 2),  # RGB
        (273, 4, 1, 0),  # StripOffsets: patched below
        (277, 3, 1, 3),
        (278, 3, 1, height),
        (279, 4, 1, width * height * 6),
        (284, 3, 1, 1),  # chunky
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_at = 8 + ifd_size
    pixels_at = bits_at + 6
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, given in entries:
        value = {258: bits_at, 273: pixels_at}.get(tag, given)
        packed = struct.pack("<HI", value, 0)[:4] if kind == 3 and count == 1 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    ifd += struct.pack("<I", 0)
    pixel = struct.pack("<HHH", *rgb16)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<HHH", 16, 16, 16) + pixel * (width * height)


def tiff_32bit(mode: str, low: float, high: float) -> bytes:
    """A 32-bit (``I`` or ``F``) TIFF, left half ``low``, right half ``high``: no fixed 0..255 range to clip to."""
    img = Image.new(mode, (40, 30), low)
    img.paste(Image.new(mode, (20, 30), high), (20, 0))
    return encode(img, "TIFF")


def jpeg_with_orientation(orientation: int) -> bytes:
    """A 40x20 red JPEG with a blue top-left corner, tagged with EXIF ``orientation``."""
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (0, 0, 10, 10))
    exif = img.getexif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", exif=exif.tobytes(), quality=95)


def jpeg_with_corrupt_exif() -> bytes:
    img = Image.new("RGB", (40, 20), RED)
    # An IFD that promises 65535 entries and ends after one: Pillow must give up on the EXIF, not the photo.
    return encode(img, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x00" * 20)


def jpeg_with_segments(marker: bytes, count: int) -> bytes:
    """A small JPEG preceded by ``count`` maximal (64 KiB) APPn/COM segments: megabytes of header."""
    body = encode(Image.new("RGB", (64, 48), GREEN), "JPEG")
    segment = marker + struct.pack(">H", 65535) + b"A" * 65533
    return body[:2] + segment * count + body[2:]


def zip_of_html() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("index.html", "<script>alert(1)</script>")
    return buf.getvalue()


def gif_that_is_javascript() -> bytes:
    """A valid GIF that is also valid JavaScript (``GIF89a/*…*/=alert(1);``): the width bytes open a comment."""
    width = struct.unpack("<H", b"/*")[0]  # 10799
    img = Image.new("P", (width, 10), 1)
    img.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    body = encode(img, "GIF")
    body = b"GIF89a" + body[6:]
    assert b"*/" not in body, "the comment must stay open until the payload"
    return body + b"*/=alert(1);"


def png_truncated() -> bytes:
    png = encode(Image.effect_noise((200, 200), 60).convert("RGB"), "PNG")
    return png[: len(png) // 2]


def gif_truncated() -> bytes:
    gif = encode(Image.effect_noise((200, 200), 60), "GIF")
    return gif[: len(gif) // 2]


def progressive_jpeg(size: tuple[int, int], **options: object) -> bytes:
    return encode(Image.new("RGB", size, (120, 30, 200)), "JPEG", progressive=True, **options)


# -- checks ------------------------------------------------------------------------------------------


def _close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def _is(
    size: tuple[int, int], colour: tuple[int, int, int], at: tuple[int, int] = (0, 0)
) -> Callable[[Image.Image], None]:
    def check(img: Image.Image) -> None:
        assert img.mode == "RGB"
        assert img.size == size
        pixel = img.getpixel(at)
        assert isinstance(pixel, tuple) and _close(pixel, colour), f"pixel {at} is {pixel}, expected {colour}"

    return check


def _halves(left: tuple[int, int, int], right: tuple[int, int, int]) -> Callable[[Image.Image], None]:
    def check(img: Image.Image) -> None:
        _is((40, 30), left)(img)
        _is((40, 30), right, at=(39, 29))(img)

    return check


def _upright_orientation_6(img: Image.Image) -> None:
    # Orientation 6: the camera was turned 90° clockwise; upright, the 40x20 photo is 20x40 and
    # its stored top-left (blue) corner is at the top right.
    assert img.size == (20, 40)
    top_right, bottom_left = img.getpixel((17, 2)), img.getpixel((2, 37))
    assert isinstance(top_right, tuple) and _close(top_right, BLUE, 40), top_right
    assert isinstance(bottom_left, tuple) and _close(bottom_left, RED, 40), bottom_left


def _as_stored(img: Image.Image) -> None:
    assert img.size == (40, 20)
    corner = img.getpixel((2, 2))
    assert isinstance(corner, tuple) and _close(corner, BLUE, 40), corner


def hostile_cases() -> list[HostileCase]:
    """Every hostile input with what a correct decoder under :data:`LIMITS` does with it."""
    too_large, unsupported, corrupt = ImageTooLargeError, UnsupportedImageError, ImageError
    svg = (
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<script>alert(1)</script><rect width="10" height="10" fill="red"/></svg>'
    )
    small_jpeg = encode(Image.new("RGB", (64, 48), GREEN), "JPEG")
    return [
        # decompression bombs: tiny files, huge declared sizes
        HostileCase("png-bomb-real-25mp", lambda: png_of_zeros(5000, 5000), refused=too_large),
        HostileCase("gif-bomb-screen-65535", lambda: gif_declaring((65535, 65535), (1, 1)), refused=too_large),
        HostileCase("gif-bomb-screen-3000", lambda: gif_declaring((3000, 3000), (1, 1)), refused=too_large),
        HostileCase("gif-bomb-frame-over-screen", lambda: gif_declaring((1, 1), (20000, 20000)), refused=too_large),
        # libjpeg keeps every DCT coefficient of a progressive JPEG: no reduced decoding saves it
        HostileCase("progressive-jpeg-16mp", lambda: progressive_jpeg((4000, 4000), subsampling=0), refused=too_large),
        HostileCase(
            "baseline-jpeg-16mp-reduced",
            lambda: encode(Image.new("RGB", (4000, 4000), RED), "JPEG"),
            check=_is((500, 500), RED),
        ),
        # at the pixel limit: decoded in full, within the bound
        HostileCase(
            "progressive-jpeg-at-limit",
            lambda: progressive_jpeg((1000, 1000), subsampling=0),
            check=_is((500, 500), (120, 30, 200)),
        ),
        HostileCase(
            "rgba-png-at-limit",
            lambda: encode(Image.new("RGBA", (1000, 1000), (*BLUE, 255)), "PNG"),
            check=_is((1000, 1000), BLUE),
        ),
        # modes and frames
        HostileCase("animated-gif", animated_gif, check=_is((32, 24), RED)),
        HostileCase("animated-png", animated_png, check=_is((32, 24), RED)),
        HostileCase(
            "cmyk-jpeg", lambda: encode(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"), check=_is((40, 30), RED)
        ),
        HostileCase("tiff-16bit-gray", lambda: encode(gray16(40000), "TIFF"), check=_is((40, 30), (156, 156, 156))),
        HostileCase("png-16bit-gray", lambda: encode(gray16(40000), "PNG"), check=_is((40, 30), (156, 156, 156))),
        HostileCase(
            "tiff-16bit-rgb", lambda: tiff_rgb48((40, 30), (65535, 32896, 0)), check=_is((40, 30), (255, 128, 0))
        ),
        HostileCase("tiff-32bit-float", lambda: tiff_32bit("F", -1.5, 3.0), check=_halves((0, 0, 0), (255, 255, 255))),
        HostileCase(
            "tiff-32bit-int", lambda: tiff_32bit("I", 70_000, 900_000), check=_halves((0, 0, 0), (255, 255, 255))
        ),
        HostileCase(
            "tiff-16bit-gray-at-limit",
            lambda: encode(gray16(65535, (1000, 1000)), "TIFF"),
            check=_is((1000, 1000), (255, 255, 255)),
        ),
        # EXIF orientation
        HostileCase("exif-orientation-6", lambda: jpeg_with_orientation(6), check=_upright_orientation_6),
        HostileCase("exif-orientation-out-of-range", lambda: jpeg_with_orientation(99), check=_as_stored),
        HostileCase("exif-corrupt", jpeg_with_corrupt_exif, check=_is((40, 20), RED, at=(30, 15))),
        # truncations the existing tests do not cover
        HostileCase("jpeg-header-only", lambda: small_jpeg[: small_jpeg.index(b"\xff\xda")], refused=corrupt),
        HostileCase("progressive-jpeg-truncated", lambda: progressive_jpeg((300, 200))[:600], refused=corrupt),
        HostileCase("png-truncated", png_truncated, refused=corrupt),
        HostileCase("gif-truncated", gif_truncated, refused=corrupt),
        # polyglots: an image is the image; anything else is not one
        HostileCase("jpeg-then-zip", lambda: small_jpeg + zip_of_html(), check=_is((64, 48), GREEN)),
        HostileCase(
            "jpeg-then-html", lambda: small_jpeg + b"<html><script>alert(1)</script></html>", check=_is((64, 48), GREEN)
        ),
        HostileCase("gif-that-is-javascript", gif_that_is_javascript, check=_is((10799, 10), GREEN)),
        HostileCase("html-then-jpeg", lambda: b"<html><script>alert(1)</script>" + small_jpeg, refused=unsupported),
        HostileCase("zip-then-jpeg", lambda: zip_of_html() + small_jpeg, refused=unsupported),
        # not rasters, or formats no photo needs
        HostileCase("svg-with-script", lambda: svg, refused=unsupported),
        HostileCase(
            "eps", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", refused=unsupported
        ),
        HostileCase(
            "xbm",
            lambda: b"#define x_width 8\n#define x_height 1\nstatic char x_bits[] = { 0xff };\n",
            refused=unsupported,
        ),
        # huge headers
        HostileCase("jpeg-3mb-of-app1", lambda: jpeg_with_segments(b"\xff\xe1", 48), check=_is((64, 48), GREEN)),
        HostileCase("jpeg-3mb-of-comments", lambda: jpeg_with_segments(b"\xff\xfe", 48), check=_is((64, 48), GREEN)),
        HostileCase(
            "png-3mb-text", lambda: png_with_chunk(b"tEXt", b"k\x00" + b"x" * 3_000_000), check=_is((10, 10), GREEN)
        ),
        HostileCase("png-ztxt-bomb", lambda: png_with_chunk(b"zTXt", b"k\x00\x00" + _deflate_bomb()), refused=corrupt),
        HostileCase("png-iccp-bomb", lambda: png_with_chunk(b"iCCP", b"p\x00\x00" + _deflate_bomb()), refused=corrupt),
        HostileCase(
            "png-ztxt-bomb-after-pixels",
            lambda: png_with_chunk(b"zTXt", b"k\x00\x00" + _deflate_bomb(), before_idat=False),
            refused=corrupt,
        ),
    ]
