"""The embedded synthetic source: deterministic, well-formed, and learnable."""
import pytest
import torch

from ltstg.data.synthetic import CLASSES, make_synthetic
from ltstg.errors import LtstgError


def test_shapes_dtypes_and_names():
    source = make_synthetic(num_classes=4, train_per_class=6, test_per_class=3, size=8, seed=0, val_per_class=2)
    assert source.name == "synthetic" and source.class_names == ("disc", "square", "triangle", "ring")
    assert set(source.splits) == {"train", "val", "test"} and source.root is None
    assert torch.bincount(source.splits["val"].labels).tolist() == [2] * 4
    train, test = source.splits["train"], source.splits["test"]
    assert train.images.shape == (24, 8, 8, 3) and train.images.dtype == torch.uint8 and train.paths is None
    assert test.images.shape == (12, 8, 8, 3)
    assert train.labels.dtype == torch.int64 and torch.bincount(train.labels).tolist() == [6] * 4
    assert len(source.fingerprint) == 64
    assert len({name for name, _, _, _ in CLASSES}) == len(CLASSES) == 100
    assert len({tuple(kind) for _, *kind in CLASSES}) == 100  # no two classes share shape, texture and palette


def test_deterministic_and_seeded():
    first = make_synthetic(num_classes=3, train_per_class=20, test_per_class=5, seed=5)
    again = make_synthetic(num_classes=3, train_per_class=20, test_per_class=5, seed=5)
    other = make_synthetic(num_classes=3, train_per_class=20, test_per_class=5, seed=6)
    for split in ("train", "test"):
        assert torch.equal(first.splits[split].images, again.splits[split].images)
        assert torch.equal(first.splits[split].labels, again.splits[split].labels)
        assert (first.splits[split].images != other.splits[split].images).float().mean() > 0.5
    assert first.fingerprint == again.fingerprint != other.fingerprint
    # the test split does not move when only the train size changes
    bigger = make_synthetic(num_classes=3, train_per_class=30, test_per_class=5, seed=5)
    assert torch.equal(bigger.splits["test"].images, first.splits["test"].images)
    assert bigger.fingerprint != first.fingerprint
    # generated validation images are new draws: neither training nor test images, and they move neither split
    more_val = make_synthetic(num_classes=3, train_per_class=20, test_per_class=5, seed=5, val_per_class=7)
    for split in ("train", "test"):
        assert torch.equal(more_val.splits[split].images, first.splits[split].images)
    val = first.splits["val"].images.flatten(1)
    for split in ("train", "test"):
        others = first.splits[split].images.flatten(1)
        assert not (val.unsqueeze(1) == others.unsqueeze(0)).all(dim=2).any(), split


def test_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    make_synthetic(num_classes=2, train_per_class=2, test_per_class=1, size=8)
    assert torch.equal(state, torch.random.get_rng_state())


def test_all_classes_draw_varied_images():
    source = make_synthetic(num_classes=20, train_per_class=8, test_per_class=1, size=16)
    images = source.splits["train"].images.view(20, 8, -1).float()
    assert (images.std(dim=1).mean(dim=1) > 10).all()  # instances differ within every class


def translation_invariant_features(images: torch.Tensor) -> torch.Tensor:
    """log |FFT| of the standardized gray image: blind to position and colour, not to shape or texture."""
    gray = images.float().mean(dim=-1)
    gray = (gray - gray.mean(dim=(1, 2), keepdim=True)) / (gray.std(dim=(1, 2), keepdim=True) + 1e-3)
    return torch.fft.fft2(gray).abs().log1p().flatten(1)


def test_classes_are_distinguishable():
    source = make_synthetic(num_classes=10, train_per_class=40, test_per_class=20, size=32, seed=1)
    train, test = source.splits["train"], source.splits["test"]
    train_features = translation_invariant_features(train.images)
    test_features = translation_invariant_features(test.images)
    mean, std = train_features.mean(dim=0), train_features.std(dim=0) + 1e-6
    train_features, test_features = (train_features - mean) / std, (test_features - mean) / std
    centres = torch.stack([train_features[train.labels == c].mean(dim=0) for c in range(10)])
    accuracy = (torch.cdist(test_features, centres).argmin(dim=1) == test.labels).float().mean().item()
    assert accuracy > 0.2  # chance is 0.1; nearest class mean on such crude features gets about 0.29


@pytest.mark.parametrize("arguments", [{"num_classes": 101}, {"num_classes": 0}, {"train_per_class": 0}, {"size": 2}])
def test_rejects_bad_arguments(arguments):
    with pytest.raises(LtstgError, match="synthetic"):
        make_synthetic(**arguments)


def test_palettes_separate_classes_of_one_shape():
    """disc, dark-disc and pale-disc differ only in the fill palette: the disc pixels tell them apart."""
    names = [name for name, *_ in CLASSES]
    picks = [names.index(n) for n in ("disc", "dark-disc", "pale-disc")]
    source = make_synthetic(num_classes=max(picks) + 1, train_per_class=30, test_per_class=1, size=16)
    images = source.splits["train"].images.view(-1, 30, 16, 16, 3).float() / 255
    centre = images[:, :, 7:9, 7:9].mean(dim=(2, 3))  # (C, 30, 3): mostly inside the disc
    brightness = centre.max(dim=-1).values  # HSV value
    saturation = 1 - centre.min(dim=-1).values / brightness.clamp_min(1e-3)
    vivid, dark, pale = (brightness[p].median() for p in picks)
    assert dark + 0.3 < min(vivid, pale)
    assert saturation[picks[2]].median() + 0.3 < saturation[picks[0]].median()
