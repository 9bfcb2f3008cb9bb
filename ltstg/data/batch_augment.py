"""Batched crop/flip/normalize of uint8 images on the compute device, so small-image epochs skip the DataLoader."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ltstg.errors import LtstgError

# The values of Cao et al.'s and MiSLAS's CIFAR code; the true per-pixel std is (0.247, 0.243, 0.261).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)


def _check_images(images: torch.Tensor) -> None:
    """Reject anything but a (B, H, W, 3) uint8 batch before it turns into silent garbage."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[-1] != 3:
        raise LtstgError(
            f"Images must be a (B, H, W, 3) uint8 tensor, got {tuple(images.shape)} {images.dtype}."
        )


Stats = Sequence[float] | torch.Tensor  # a tensor already on the images' device costs no copy per batch


def _normalize(images: torch.Tensor, mean: Stats, std: Stats, channels_last: bool) -> torch.Tensor:
    """Scale (B, H, W, 3) uint8 to normalized float and return it as (B, 3, H, W) in the requested memory layout."""
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device)
    scaled = (images.float() / 255.0 - mean_t) / std_t  # (B, H, W, 3)
    out = scaled.permute(0, 3, 1, 2)  # a permuted NHWC tensor already has channels_last strides
    return out if channels_last else out.contiguous()


def to_model_input(
    images: torch.Tensor, mean: Stats, std: Stats, channels_last: bool = False
) -> torch.Tensor:
    """Evaluation input: normalize only, so test images are seen exactly as stored."""
    _check_images(images)
    return _normalize(images, mean, std, channels_last)


def augment_batch(
    images: torch.Tensor,
    *,
    generator: torch.Generator,
    mean: Stats,
    std: Stats,
    pad: int = 4,
    flip: bool = True,
    channels_last: bool = False,
) -> torch.Tensor:
    """Per-sample zero-pad random crop and flip, as torchvision's RandomCrop(padding) + flip, in one gather."""
    _check_images(images)
    batch, height, width, _ = images.shape
    device = images.device
    padded = F.pad(images, (0, 0, pad, pad, pad, pad))  # (B, H + 2 pad, W + 2 pad, 3)
    top = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=device)  # (B,)
    left = torch.randint(0, 2 * pad + 1, (batch,), generator=generator, device=device)  # (B,)
    rows = top[:, None] + torch.arange(height, device=device)  # (B, H)
    cols = left[:, None] + torch.arange(width, device=device)  # (B, W)
    if flip:
        flipped = torch.rand(batch, generator=generator, device=device) < 0.5  # (B,)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    index = torch.arange(batch, device=device)[:, None, None]
    cropped = padded[index, rows[:, :, None], cols[:, None, :]]  # (B, H, W, 3)
    return _normalize(cropped, mean, std, channels_last)
