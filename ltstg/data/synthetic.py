"""The embedded default data set: procedurally drawn shapes and textures, so everything runs without a download."""
from __future__ import annotations

import hashlib
import math

import torch
from matplotlib.colors import hsv_to_rgb

from ltstg.data import Source, Split, fingerprint
from ltstg.errors import LtstgError

VERSION = "synthetic-v2"  # bump when the drawing changes, so old artifact ids stop matching
CHUNK = 512  # images drawn at once: bounds memory for large sizes; fixed so results don't depend on it

# (name, shape, texture), ordered so any prefix stays varied: the first ten are the default set
FIRST_SHAPE_TEXTURES = (
    ("disc", "disc", "solid"),
    ("square", "square", "solid"),
    ("triangle", "triangle", "solid"),
    ("ring", "ring", "solid"),
    ("cross", "cross", "solid"),
    ("stripes", "full", "stripes"),
    ("checkerboard", "full", "checker"),
    ("star", "star", "solid"),
    ("bar", "bar", "solid"),
    ("crescent", "crescent", "solid"),
    ("striped-disc", "disc", "stripes"),
    ("checkered-square", "square", "checker"),
    ("dotted-triangle", "triangle", "dots"),
    ("frame", "frame", "solid"),
    ("half-disc", "half-disc", "solid"),
    ("dots", "full", "dots"),
    ("striped-square", "square", "stripes"),
    ("checkered-disc", "disc", "checker"),
    ("dotted-disc", "disc", "dots"),
    ("striped-triangle", "triangle", "stripes"),
)
_TAKEN = {(shape, texture) for _, shape, texture in FIRST_SHAPE_TEXTURES}
SHAPE_TEXTURES = FIRST_SHAPE_TEXTURES + tuple(  # then every other textured shape: 43 in all
    (f"{adjective}-{shape}", shape, texture)
    for shape in ("ring", "cross", "star", "bar", "crescent", "frame", "half-disc", "square", "triangle")
    for texture, adjective in (("stripes", "striped"), ("checker", "checkered"), ("dots", "dotted"))
    if (shape, texture) not in _TAKEN
)

# Fill colours are drawn from one of three disjoint HSV ranges, a class attribute like shape and texture:
# palette -> ((saturation low, high), (value low, high)); hue is free
PALETTES = {
    "vivid": ((0.75, 1.0), (0.75, 1.0)),
    "dark": ((0.3, 1.0), (0.15, 0.4)),
    "pale": ((0.0, 0.25), (0.8, 1.0)),
}
MAX_CLASSES = 100

# (class name, shape, texture, palette): every shape-texture in vivid colours first, then dark, then pale
CLASSES = tuple(
    (name if palette == "vivid" else f"{palette}-{name}", shape, texture, palette)
    for palette in PALETTES
    for name, shape, texture in SHAPE_TEXTURES
)[:MAX_CLASSES]


def make_synthetic(
    num_classes: int = 10, train_per_class: int = 500, test_per_class: int = 100, size: int = 32, seed: int = 0,
    val_per_class: int = 100,
) -> Source:
    """Balanced train, val and test splits, bit-identical for the same arguments, from private generators.

    Instances vary in colour, position, scale, rotation, background gradient and noise, so a small
    CNN learns the classes well above chance but not perfectly.
    """
    if not 1 <= num_classes <= len(CLASSES):
        raise LtstgError(f"the synthetic source has 1 to {len(CLASSES)} classes, got num_classes={num_classes}.")
    if min(train_per_class, test_per_class, val_per_class) < 1:
        raise LtstgError(
            f"the synthetic source needs at least one image per class and split, got {train_per_class} train, "
            f"{val_per_class} val and {test_per_class} test."
        )
    if size < 4:
        raise LtstgError(f"synthetic images must be at least 4 pixels wide, got size={size}.")
    splits = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class), ("val", val_per_class)):
        # one generator per split, so the test set does not change with train_per_class or val_per_class
        generator = torch.Generator().manual_seed(_split_seed(seed, split))
        images = [
            _draw(shape, texture, palette, min(CHUNK, per_class - start), size, generator)
            for _, shape, texture, palette in CLASSES[:num_classes]
            for start in range(0, per_class, CHUNK)
        ]
        splits[split] = Split(
            labels=torch.arange(num_classes).repeat_interleave(per_class),  # (N,) int64, class-major
            images=torch.cat(images),  # (N, size, size, 3) uint8
        )
    parameters = f"{VERSION} {num_classes} {train_per_class} {test_per_class} {size} {seed} val {val_per_class}"
    return Source(
        name="synthetic",
        class_names=tuple(name for name, _, _, _ in CLASSES[:num_classes]),
        splits=splits,
        fingerprint=fingerprint([parameters]),
    )


def _split_seed(seed: int, split: str) -> int:
    """A 63-bit seed per (seed, split), so no two pairs share a stream."""
    return int.from_bytes(hashlib.sha256(f"{VERSION}:{seed}:{split}".encode()).digest()[:8], "little") >> 1


def _draw(shape: str, texture: str, palette: str, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """n random instances of one class as (n, size, size, 3) uint8."""

    def uniform(low: float, high: float, *dims: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *dims, generator=generator)

    axis = (torch.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    y, x = axis.view(1, size, 1), axis.view(1, 1, size)

    # background: a linear gradient between two random colours in a random direction
    direction = uniform(0, 2 * math.pi, 1, 1)
    ramp = ((x * direction.cos() + y * direction.sin()) / (2 * math.sqrt(2)) + 0.5).unsqueeze(-1)  # (n, S, S, 1)
    start, end = uniform(0, 1, 1, 1, 3), uniform(0, 1, 1, 1, 3)
    background = torch.lerp(start, end, ramp)  # (n, S, S, 3)

    # pose: local coordinates (u, v) in which the shape has radius about 1
    scale = uniform(0.4, 0.75, 1, 1)
    angle = uniform(0, 2 * math.pi, 1, 1)
    centre_x, centre_y = (1 - scale) * uniform(-0.9, 0.9, 1, 1), (1 - scale) * uniform(-0.9, 0.9, 1, 1)
    dx, dy = x - centre_x, y - centre_y
    u = (angle.cos() * dx + angle.sin() * dy) / scale  # (n, S, S)
    v = (-angle.sin() * dx + angle.cos() * dy) / scale

    mask = SHAPES[shape](u, v)  # (n, S, S) bool
    period, phase = uniform(0.45, 0.7, 1, 1), uniform(0, 2 * math.pi, 1, 1)
    pattern = TEXTURES[texture](u * (2 * math.pi) / period + phase, v * (2 * math.pi) / period + phase)
    (s_low, s_high), (v_low, v_high) = PALETTES[palette]
    colours = [
        torch.cat([uniform(0, 1, 1, 1, 1), uniform(s_low, s_high, 1, 1, 1), uniform(v_low, v_high, 1, 1, 1)], dim=-1)
        for _ in range(2)
    ]  # two (n, 1, 1, 3) HSV colours
    first, second = (torch.from_numpy(hsv_to_rgb(c.numpy())).float() for c in colours)
    fill = torch.where(pattern.unsqueeze(-1), first, second)  # (n, S, S, 3)
    image = torch.where(mask.unsqueeze(-1), fill, background)
    noise = torch.randn(n, size, size, 3, generator=generator).mul_(uniform(0, 0.12, 1, 1, 1))  # in place: big tensors
    return image.add_(noise).clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _triangle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Equilateral triangle with circumradius 1: inside all three edges at distance 0.5."""
    inside = torch.ones_like(u, dtype=torch.bool)
    for normal in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6):
        inside &= u * math.cos(normal) + v * math.sin(normal) < 0.5
    return inside


SHAPES = {
    "full": lambda u, v: torch.ones_like(u, dtype=torch.bool),
    "disc": lambda u, v: u.hypot(v) < 1,
    "ring": lambda u, v: (u.hypot(v) < 1) & (u.hypot(v) > 0.55),
    "square": lambda u, v: torch.maximum(u.abs(), v.abs()) < 0.8,
    "frame": lambda u, v: (torch.maximum(u.abs(), v.abs()) < 0.85) & (torch.maximum(u.abs(), v.abs()) > 0.45),
    "triangle": _triangle,
    "cross": lambda u, v: ((u.abs() < 0.28) & (v.abs() < 0.95)) | ((v.abs() < 0.28) & (u.abs() < 0.95)),
    "star": lambda u, v: u.hypot(v) < 0.55 + 0.4 * torch.cos(5 * torch.atan2(v, u)),
    "bar": lambda u, v: (u.abs() < 1) & (v.abs() < 0.3),
    "crescent": lambda u, v: (u.hypot(v) < 1) & ((u - 0.45).hypot(v) > 0.75),
    "half-disc": lambda u, v: (u.hypot(v) < 1) & (v > 0),
}

# Textures take phases (2π per period) along u and v; True picks the first of two colours.
TEXTURES = {
    "solid": lambda a, b: torch.ones_like(a, dtype=torch.bool),
    "stripes": lambda a, b: a.sin() > 0,
    "checker": lambda a, b: a.sin() * b.sin() > 0,
    "dots": lambda a, b: a.cos() + b.cos() > 1,
}
