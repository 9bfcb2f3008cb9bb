"""Batched crop/flip: each output is an exact zero-padded shifted (maybe flipped) copy, drawn from the generator."""
import pytest
import torch

from ltstg.data.batch_augment import CIFAR_MEAN, CIFAR_STD, augment_batch, to_model_input
from ltstg.errors import LtstgError

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _images(batch, size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)


def _reference_pad(image, pad):
    """Slow zero padding of one (H, W, 3) image, pixel by pixel, as RandomCrop(padding=pad, fill=0) sees it."""
    height, width, _ = image.shape
    padded = torch.zeros(height + 2 * pad, width + 2 * pad, 3, dtype=image.dtype)
    for row in range(height):
        for col in range(width):
            padded[row + pad, col + pad] = image[row, col]
    return padded


def _reference_crop(padded, size, top, left, flip):
    """One crop of a padded image, then the horizontal flip."""
    crop = padded[top:top + size, left:left + size]
    return crop.flip(1) if flip else crop


def _as_uint8(output):
    return (output.permute(0, 2, 3, 1) * 255).round().to(torch.uint8)  # (B, H, W, 3)


def test_shapes_dtypes_and_layout():
    images = _images(5, size=32)
    out = augment_batch(images, generator=torch.Generator().manual_seed(0), mean=CIFAR_MEAN, std=CIFAR_STD)
    assert out.shape == (5, 3, 32, 32) and out.dtype == torch.float32 and out.is_contiguous()
    out_cl = augment_batch(images, generator=torch.Generator().manual_seed(0), mean=CIFAR_MEAN, std=CIFAR_STD,
                           channels_last=True)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out)
    assert images.dtype == torch.uint8 and images.shape == (5, 32, 32, 3)


def test_to_model_input_normalizes_without_augmenting():
    images = _images(3)
    out = to_model_input(images, CIFAR_MEAN, CIFAR_STD)
    expected = (images.permute(0, 3, 1, 2).float() / 255 - torch.tensor(CIFAR_MEAN)[:, None, None]) \
        / torch.tensor(CIFAR_STD)[:, None, None]
    torch.testing.assert_close(out, expected)
    assert to_model_input(images, CIFAR_MEAN, CIFAR_STD, channels_last=True).is_contiguous(
        memory_format=torch.channels_last)


def test_same_seed_same_output_different_seed_differs():
    images = _images(16)
    outputs = [augment_batch(images, generator=torch.Generator().manual_seed(seed), **IDENTITY) for seed in (1, 1, 2)]
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], outputs[2])


def test_each_sample_is_an_exact_shifted_copy_with_zero_fill():
    pad, images = 2, _images(400, size=6)
    out = _as_uint8(augment_batch(images, generator=torch.Generator().manual_seed(0), pad=pad, **IDENTITY))
    seen = set()
    for image, crop in zip(images, out):
        padded = _reference_pad(image, pad)
        matches = [(top, left, flip)
                   for top in range(2 * pad + 1) for left in range(2 * pad + 1) for flip in (False, True)
                   if torch.equal(crop, _reference_crop(padded, 6, top, left, flip))]
        assert matches, "output is not any padded crop of its input"
        seen.update(matches)
    assert {(top, left) for top, left, _ in seen} == {(t, l) for t in range(2 * pad + 1) for l in range(2 * pad + 1)}


def test_no_flip_and_no_pad_is_identity():
    images = _images(8)
    out = augment_batch(images, generator=torch.Generator().manual_seed(0), pad=0, flip=False, **IDENTITY)
    assert torch.equal(_as_uint8(out), images)


def test_flip_fraction_is_about_half():
    images = _images(4000, size=4)
    out = _as_uint8(augment_batch(images, generator=torch.Generator().manual_seed(0), pad=0, **IDENTITY))
    flipped = (out == images.flip(2)).flatten(1).all(1) & ~(out == images).flatten(1).all(1)
    assert 0.45 < flipped.float().mean().item() < 0.55


def test_rejects_non_uint8_images():
    with pytest.raises(LtstgError, match="uint8"):
        augment_batch(torch.zeros(2, 8, 8, 3), generator=torch.Generator(), **IDENTITY)
