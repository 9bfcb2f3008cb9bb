"""Batches of model inputs for stage 1 and feature extraction, from device tensors or from files.

Small images (CIFAR, image folders, the generator) live as one uint8 tensor on the compute device
and are augmented there in batches, with no per-image Python. File-based sets (ImageNet-LT,
Places-LT) are decoded by persistent DataLoader workers with torchvision transforms v2 and reach the
device as uint8, where they are normalised.
"""
from __future__ import annotations

import math
import os
from typing import Iterator, Protocol

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from ltstg.data.batch_augment import augment_batch, to_model_input
from ltstg.data.imagefolder import UNREADABLE
from ltstg import ranks
from ltstg.errors import LtstgError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Batch = tuple[torch.Tensor, torch.Tensor]
# joins the backbone id of file-based data sets: 2 = crops seeded per sample, schedule counting the
# batches an epoch yields; bump it whenever FileInputs would train other weights from the same settings
FILE_INPUTS_REVISION = 2


class ImageInputs(Protocol):
    splits: dict  # split name -> its images (or paths) and labels
    num_train: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def train_steps(self, batch_size: int, world_size: int = 1) -> int: ...

    def train_batches(self, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator[Batch]: ...

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]: ...

    def view_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]: ...

    def sample_batches(self, order: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]: ...


def shard(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This rank's share of a global batch: every world_size-th sample, so shares differ by at most one."""
    return indices[rank::world_size]


class TensorInputs:
    """uint8 (N, H, W, 3) images held on the compute device, cropped/flipped/normalised in batches."""

    def __init__(self, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device, channels_last: bool = False) -> None:
        self.splits = {name: (images.to(device), labels.to(device)) for name, (images, labels) in splits.items()}
        self.device = device
        self.channels_last = channels_last
        train = self.splits["train"][0]
        self.num_train = len(train)
        self.mean, self.std = channel_stats(train)
        # on the device once, not copied there for every batch (torch.as_tensor keeps a tensor where it is)
        self.mean_t = torch.tensor(self.mean, dtype=torch.float32, device=device)
        self.std_t = torch.tensor(self.std, dtype=torch.float32, device=device)

    def train_steps(self, batch_size: int, world_size: int = 1) -> int:
        """Batches per epoch, as train_batches yields them (the schedule counts steps)."""
        last = self.num_train % batch_size
        full = self.num_train // batch_size if batch_size >= 2 * world_size else 0  # a rank's share must be ≥ 2
        return full + (last - last % world_size >= 2 * world_size)

    def train_batches(self, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """One epoch: a seeded permutation, augmented per global batch so every rank draws the same numbers."""
        images, labels = self.splits["train"]
        order = torch.randperm(self.num_train, generator=generator, device=generator.device).to(self.device)
        for start in range(0, self.num_train, batch_size):
            index = order[start : start + batch_size]
            index = index[: len(index) - len(index) % world_size]  # equal shards keep the ranks' generators in step
            if len(index) < 2 * world_size:  # a one-sample batch breaks BatchNorm
                continue
            batch = augment_batch(
                images[index], generator=generator, mean=self.mean_t, std=self.std_t, channels_last=self.channels_last
            )
            yield shard(batch, rank, world_size), shard(labels[index], rank, world_size)

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        images, labels = self.splits[split]
        for start in range(0, len(labels), batch_size):
            part = slice(start, start + batch_size)
            yield to_model_input(images[part], self.mean_t, self.std_t, self.channels_last), labels[part]

    def view_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Augmented training images in stored order (extra feature views)."""
        yield from self.sample_batches(torch.arange(self.num_train, device=self.device), batch_size, generator)

    def sample_batches(self, order: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Augmented training images in the given order of their indices, batch by batch."""
        images, order = self.splits["train"][0], order.to(self.device)
        for start in range(0, len(order), batch_size):
            yield augment_batch(
                images[order[start : start + batch_size]], generator=generator, mean=self.mean_t, std=self.std_t,
                channels_last=self.channels_last,
            )


STATS_BYTES = 256 * 2**20  # the float64 temporary of one chunk of channel statistics


def stats_chunk(image_shape: tuple[int, ...], budget: int = STATS_BYTES) -> int:
    """Images per chunk of `channel_stats` so that its float64 copy stays within `budget` bytes (at least one):
    10,922 CIFAR images, 222 at 224 px (a fixed 8,192 was a 10 GB temporary there)."""
    pixels = 1
    for size in image_shape:
        pixels *= size
    return max(1, budget // (8 * pixels))


def channel_stats(images: torch.Tensor, chunk: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, H, W, 3) images in [0, 1], in chunks to bound memory."""
    chunk = chunk or stats_chunk(tuple(images.shape[1:]))
    total = torch.zeros(3, dtype=torch.float64, device=images.device)
    squares = torch.zeros(3, dtype=torch.float64, device=images.device)
    for start in range(0, len(images), chunk):
        part = images[start : start + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 1, 2))
        squares += (part * part).sum(dim=(0, 1, 2))
    count = max(images.shape[0] * images.shape[1] * images.shape[2], 1)
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def epoch_seed(generator: torch.Generator) -> int:
    """One draw from the stage generator that seeds every random transform of one pass over the files."""
    return int(torch.randint(2**62, (1,), generator=generator, device=generator.device))


Key = tuple[str, int, "int | None"]  # (split, index, the seed of its random transform; None: the eval transform)


def default_workers() -> int:
    """Loader workers when none are asked for: the cores this process may use, shared among the ranks on its
    node, one left for each rank's own process (at least one, at most 16)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # after stage 1 the first rank goes on alone (its process group ended): then the node's cores are its own
    ranks_here = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", 1))) if ranks.distributed() else 1
    return max(1, min(16, cores // ranks_here - 1))


class _Files(Dataset):
    """Image files of every split, read by key and returned as uint8 (3, H, W): a quarter of float32's bytes
    through the worker queues, the pinned buffer and the copy to the device, which normalises.

    A seeded key's transform draws from its own seeded RNG, so a sample comes out the same however many
    workers load it (the worker count is a run option, never part of an id)."""

    def __init__(self, root: str, splits: dict[str, tuple[list[str], torch.Tensor]], train: v2.Transform,
                 evaluate: v2.Transform) -> None:
        self.root, self.splits, self.train, self.evaluate = root, splits, train, evaluate

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        split, index, seed = key
        paths, labels = self.splits[split]
        path = os.path.join(self.root, paths[index])
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except UNREADABLE as error:  # make-dataset opened every file: this one changed since
            reason = getattr(error, "strerror", None) or str(error).splitlines()[0]
            raise LtstgError(f"cannot read image {path} ({reason}); it was readable when the data "
                             "set was made: restore it, or rerun make-dataset to skip it.") from None
        if seed is None:
            return self.evaluate(rgb), int(labels[index])
        with torch.random.fork_rng(devices=[]):  # torchvision's transforms draw from the global RNG
            torch.default_generator.manual_seed(seed % 2**63)
            return self.train(rgb), int(labels[index])


def _worker_message(text: str) -> str:
    """The LtstgError line of a DataLoader worker's re-raised error ("Caught LtstgError in DataLoader worker
    process 0. Original Traceback … ltstg.errors.LtstgError: <message>"): the message alone."""
    marker = f"{LtstgError.__module__}.{LtstgError.__qualname__}: "
    lines = [line.split(marker, 1)[1] for line in text.splitlines() if marker in line]
    return lines[-1] if lines else text


class _Plan(Sampler):
    """The batches (lists of keys) of the pass under way. The loader, and its persistent workers, are made
    once; before each pass the main process only replaces the plan the loader reads its batches from."""

    def __init__(self) -> None:
        self.batches: list[list[Key]] = []

    def __iter__(self) -> Iterator[list[Key]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class FileInputs:
    """Images decoded from files by one DataLoader with persistent workers (ImageNet-LT, Places-LT)."""

    def __init__(
        self, root: str, splits: dict[str, tuple[list[str], torch.Tensor]], size: int, device: torch.device,
        workers: int | None = None, channels_last: bool = False,
    ) -> None:
        if not os.path.isdir(root):
            raise LtstgError(f"image root {root!r} of this data set is not a folder here; rerun make-dataset with --root.")
        self.root, self.splits, self.size, self.device = root, splits, size, device
        self.workers = default_workers() if workers is None else workers
        self.channels_last = channels_last
        self.num_train = len(splits["train"][0])
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self.mean_t = torch.tensor(self.mean, device=device).view(3, 1, 1)  # on the device once
        self.std_t = torch.tensor(self.std, device=device).view(3, 1, 1)
        to_uint8 = v2.ToImage()
        files = _Files(root, splits, v2.Compose([v2.RandomResizedCrop(size), v2.RandomHorizontalFlip(), to_uint8]),
                       eval_transform(size))
        self._plan = _Plan()
        self._passes = 0  # a pass started after another one invalidates it (they share the loader)
        self._loader = DataLoader(
            files, batch_sampler=self._plan, num_workers=self.workers, pin_memory=device.type == "cuda",
            persistent_workers=self.workers > 0,
            generator=torch.Generator().manual_seed(0),  # else the loader draws its base seed from the global RNG
        )

    def _pass(self, batches: list[list[Key]]) -> Iterator[Batch]:
        self._passes += 1
        mine = self._passes
        self._plan.batches = batches
        loaded = iter(self._loader)  # with persistent workers, the one iterator every pass shares
        while True:
            if self._passes != mine:  # checked before each draw: the shared iterator now serves the other pass
                raise RuntimeError("FileInputs: a pass over the files was resumed after another one started")
            try:
                images, labels = next(loaded)
            except StopIteration:
                return
            except LtstgError as error:  # from a worker, its message wrapped in the worker's traceback
                raise LtstgError(_worker_message(str(error))) from None
            images = images.to(self.device, non_blocking=True)
            normalised = images.float().mul_(1.0 / 255).sub_(self.mean_t).div_(self.std_t)  # as v2.ToDtype + Normalize
            if self.channels_last:
                normalised = normalised.contiguous(memory_format=torch.channels_last)
            yield normalised, labels.to(self.device, non_blocking=True)

    def train_steps(self, batch_size: int, world_size: int = 1) -> int:
        """Batches per epoch: each rank's share, in full batches only (the last partial one is dropped)."""
        return (self.num_train // world_size) // (batch_size // world_size)

    def train_batches(self, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1) -> Iterator[Batch]:
        """One epoch; the permutation comes from the stage generator, so it is seeded and resumable."""
        order = torch.randperm(self.num_train, generator=generator, device=generator.device).cpu()
        mine = shard(order[: self.num_train - self.num_train % world_size], rank, world_size).tolist()
        seed, size = epoch_seed(generator), batch_size // world_size
        keys = [("train", index, seed + index) for index in mine]
        yield from self._pass(_batched(keys, size, drop_last=True))

    def eval_batches(self, split: str, batch_size: int) -> Iterator[Batch]:
        keys = [(split, index, None) for index in range(len(self.splits[split][0]))]
        yield from self._pass(_batched(keys, batch_size))

    def view_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        seed = epoch_seed(generator)
        keys = [("train", index, seed + index) for index in range(self.num_train)]
        for images, _ in self._pass(_batched(keys, batch_size)):
            yield images

    def sample_batches(self, order: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Augmented training images in the given order of their indices (the last partial batch dropped); an
        image drawn twice gets two crops, since each position seeds its own transform."""
        seed = epoch_seed(generator)
        keys = [("train", index, seed + position) for position, index in enumerate(order.cpu().tolist())]
        for images, _ in self._pass(_batched(keys, batch_size, drop_last=True)):
            yield images


EVAL_CROP = 224 / 256  # the share of the resized image the centre crop keeps (timm's crop_pct)


def eval_transform(size: int) -> v2.Transform:
    """A decoded PIL image as the evaluation sees it when images stay files (ImageNet-LT, Places-LT, iNaturalist):
    shorter side resized to size / EVAL_CROP, a centre crop of size × size, uint8 (3, size, size)."""
    return v2.Compose([v2.Resize(math.ceil(size / EVAL_CROP)), v2.CenterCrop(size), v2.ToImage()])


def _batched(keys: list[Key], size: int, drop_last: bool = False) -> list[list[Key]]:
    end = len(keys) - len(keys) % size if drop_last else len(keys)
    return [keys[start : start + size] for start in range(0, end, size)]
