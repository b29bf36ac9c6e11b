"""Open a query image given on the command line: a local path or an http(s) URL."""

from __future__ import annotations

from pathlib import Path

import httpx
from PIL import Image

from retrieval.errors import ImageError, ImageTooLargeError
from retrieval.images import ImageLimits, decode_image, read_image_file

__all__ = ["open_image_source"]


def _fetch(url: str, limits: ImageLimits, timeout_s: float) -> bytes:
    try:
        with httpx.stream("GET", url, timeout=timeout_s, follow_redirects=True) as resp:
            if resp.status_code != 200:
                raise ImageError(f"fetching {url} answered HTTP {resp.status_code}")
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > limits.max_bytes:
                    raise ImageTooLargeError(f"{url} is over the limit of {limits.max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise ImageError(f"cannot fetch {url}: {exc}") from exc


def open_image_source(source: str, limits: ImageLimits, *, timeout_s: float = 10.0) -> Image.Image:
    """Decode the image at ``source`` (path or http(s) URL) under ``limits``."""
    if source.startswith(("http://", "https://")):
        return decode_image(_fetch(source, limits, timeout_s), limits, name=source)
    path = Path(source).expanduser()
    if not path.is_file():
        raise ImageError(f"image file {source} does not exist")
    return read_image_file(path, limits)
