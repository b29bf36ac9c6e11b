"""Hostile images through ``retrieval.images.decode_image``: a clear ImageError or a correct image, in bounded memory.

The cases (bombs, animated, CMYK, 16-bit, EXIF rotation, truncations, polyglots, SVG/EPS,
huge headers) live in ``tests/support/hostile_images.py``; the HTTP API runs the same table
in ``tests/api/http/test_hostile_content.py``. ``test_images.py`` keeps the basic contract.
"""

from __future__ import annotations

import io
import random

import pytest
from PIL import Image

from retrieval.errors import ImageError, ImageTooLargeError
from retrieval.images import decode_image
from tests.support.hostile_images import (
    LIMITS,
    HostileCase,
    can_measure_peak,
    encode,
    hostile_cases,
    memory_bound,
    peak_rss_growth,
)

CASES = hostile_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_image_is_refused_clearly_or_decoded_right(case: HostileCase) -> None:
    data = case.make()
    if case.refused is not None:
        with pytest.raises(case.refused) as caught:
            decode_image(data, LIMITS, name="the photo")
        assert str(caught.value).startswith("the photo"), "the message names what was refused"
    else:
        assert case.check is not None
        case.check(decode_image(data, LIMITS))


@pytest.mark.skipif(not can_measure_peak(), reason="this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decoding_stays_within_the_memory_bound(case: HostileCase) -> None:
    data = case.make()
    outcome, grown = peak_rss_growth(lambda: decode_image(data, LIMITS))
    assert isinstance(outcome, Image.Image | ImageError), repr(outcome)
    bound = memory_bound(LIMITS, data)
    assert grown <= bound, (
        f"peak RSS grew {grown / 2**20:.1f} MiB decoding {case.id}; the bound is {bound / 2**20:.1f} MiB"
    )


def test_the_memory_probe_sees_a_full_decode() -> None:
    """The probe is not blind: decoding a bomb without the limits would blow the bound it guards."""
    if not can_measure_peak():
        pytest.skip("this kernel cannot reset the peak RSS (/proc/self/clear_refs)")
    data = encode(Image.new("RGB", (2500, 2000), (1, 2, 3)), "PNG")  # 5 MP: 20 MB decoded, 16 MB allowed

    def unguarded() -> Image.Image:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")

    _, grown = peak_rss_growth(unguarded)
    assert grown > memory_bound(LIMITS, data)
    with pytest.raises(ImageTooLargeError):
        decode_image(data, LIMITS)


def test_mpo_photos_are_decoded_reduced_like_jpegs() -> None:
    """Phones write multi-picture JPEGs (Pillow's MPO): they get the DCT-reduced decode, not a refusal."""
    first, second = Image.new("RGB", (2400, 1600), (200, 30, 30)), Image.new("RGB", (2400, 1600), (0, 0, 0))
    data = encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    img = decode_image(data, LIMITS)
    assert img.size == (600, 400)
    pixel = img.getpixel((10, 10))
    assert isinstance(pixel, tuple) and pixel[0] > 150 and pixel[1] < 80, pixel


_SEEDS = {
    "jpeg": ("JPEG", {}),
    "progressive-jpeg": ("JPEG", {"progressive": True}),
    "png": ("PNG", {}),
    "gif": ("GIF", {}),
    "webp": ("WEBP", {}),
    "tiff": ("TIFF", {}),
    "tiff-lzw": ("TIFF", {"compression": "tiff_lzw"}),
    "bmp": ("BMP", {}),
    "avif": ("AVIF", {}),
}


@pytest.mark.parametrize("seed", sorted(_SEEDS))
def test_corrupted_files_only_ever_raise_image_errors(seed: str) -> None:
    """Seeded byte flips, cuts and insertions in every allowed format: a decoded image or an ImageError.

    Before the fix, PNGs with a cut IHDR and TIFFs with bad dimensions raised ValueError, and
    corrupt AVIFs RuntimeError: 500s at the API.
    """
    fmt, options = _SEEDS[seed]
    base = Image.new("RGB", (24, 16), (10, 200, 30))
    base.paste((200, 0, 0), (0, 0, 8, 8))
    original = encode(base, fmt, **options)
    rng = random.Random(seed)
    for _ in range(150):
        data = bytearray(original)
        for _ in range(rng.choice((1, 2, 4, 8))):
            at, roll = rng.randrange(len(data)), rng.random()
            if roll < 0.6:
                data[at] = rng.randrange(256)
            elif roll < 0.8:
                del data[at : at + rng.randrange(1, 16)]
            else:
                data[at:at] = rng.randbytes(rng.randrange(1, 8))
        try:
            img = decode_image(bytes(data), LIMITS)
        except ImageError:
            continue
        assert img.mode == "RGB" and img.width * img.height <= LIMITS.max_pixels


def test_corrupted_exif_never_costs_the_photo() -> None:
    """Seeded byte flips in an EXIF block (orientation 6, a maker, a sub-IFD): the photo decodes, or is refused clearly.

    Before the fix one of these (a rational tag that reads back as text) raised TypeError from
    Pillow re-writing the EXIF after the rotation.
    """
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6
    exif[0x010F] = "Cam"
    exif[0x8769] = {0x9003: "2020:01:01"}
    raw = exif.tobytes()
    rng = random.Random(1)
    for _ in range(4000):
        mutated = bytearray(raw)
        for _ in range(rng.choice((1, 2, 4))):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        data = encode(img, "JPEG", exif=bytes(mutated))
        try:
            decoded = decode_image(data, LIMITS)
        except ImageError:
            continue
        assert decoded.size in ((40, 20), (20, 40))
