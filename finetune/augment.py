"""Batched photo augmentations that turn catalogue thumbnails into buyer-like photos.

Buyers upload their own photos: other sizes, crops, framing and JPEG quality. These
augmentations work on whole uint8/float batches (affine crops with ``grid_sample``,
resolution loss, light colour jitter, JPEG re-compression) so training stays CPU-fast.

Example:
    >>> aug = BuyerPhotoAugment(out_size=64)  # doctest: +SKIP
    >>> x = aug(batch_uint8, generator)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.io import decode_jpeg, encode_jpeg

__all__ = ["BuyerPhotoAugment", "resize_batch"]


def resize_batch(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (B,3,H,W) → float (B,3,size,size) in [0,1], squashed like the tower's preprocessing."""
    x = images.float() / 255.0
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


class BuyerPhotoAugment:
    """Random crop/zoom/shift/flip, resolution loss, mild colour jitter and JPEG re-compression, batched."""

    def __init__(
        self,
        out_size: int,
        *,
        min_scale: float = 0.55,
        max_shift: float = 0.15,
        lowres_prob: float = 0.4,
        jpeg_prob: float = 0.3,
        jitter: float = 0.08,
    ) -> None:
        self.out_size = out_size
        self.min_scale = min_scale
        self.max_shift = max_shift
        self.lowres_prob = lowres_prob
        self.jpeg_prob = jpeg_prob
        self.jitter = jitter

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (B,3,H,W) → float (B,3,out,out) in [0,1]."""
        b = images.shape[0]
        g = generator
        x = images.float() / 255.0
        # Crop: zoom into a random window (scale < 1 zooms in), aspect jitter, shift, horizontal flip.
        scale = self.min_scale + (1 - self.min_scale) * torch.rand(b, generator=g)
        aspect = torch.exp((torch.rand(b, generator=g) - 0.5) * 0.3)
        sx, sy = scale * aspect.sqrt(), scale / aspect.sqrt()
        tx = (torch.rand(b, generator=g) * 2 - 1) * self.max_shift
        ty = (torch.rand(b, generator=g) * 2 - 1) * self.max_shift
        flip = torch.where(torch.rand(b, generator=g) < 0.5, -1.0, 1.0)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = sx * flip
        theta[:, 1, 1] = sy
        theta[:, 0, 2] = tx
        theta[:, 1, 2] = ty
        grid = F.affine_grid(theta, [b, 3, self.out_size, self.out_size], align_corners=False)
        # Border padding, as a photo crop never shows empty canvas; catalogue backgrounds are mostly plain.
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # Resolution loss: down to 35–80 % then back up (a small or blurry upload).
        low = torch.rand(b, generator=g) < self.lowres_prob
        if low.any():
            factor = float(0.35 + 0.45 * torch.rand(1, generator=g))
            side = max(8, int(self.out_size * factor))
            small = F.interpolate(x[low], size=(side, side), mode="bilinear", antialias=True, align_corners=False)
            x[low] = F.interpolate(small, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        # Mild brightness/contrast jitter only: colour is part of relevance, so hue is left alone.
        bright = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * self.jitter
        contrast = 1 + (torch.rand(b, 1, 1, 1, generator=g) * 2 - 1) * self.jitter
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * contrast + mean) * bright
        x = x.clamp(0, 1)
        # JPEG re-compression at low quality for a share of the batch.
        for i in torch.nonzero(torch.rand(b, generator=g) < self.jpeg_prob).flatten().tolist():
            quality = int(20 + 60 * float(torch.rand(1, generator=g)))
            u8 = (x[i] * 255).round().to(torch.uint8)
            x[i] = decode_jpeg(encode_jpeg(u8, quality=quality)).float() / 255.0
        return x
