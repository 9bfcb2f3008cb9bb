"""The Cao et al. counts and the LDAM-DRW selection, index for index."""
import numpy as np
import pytest

from ltstg.data.longtail import assign_groups, make_profile, select_long_tail, split_off_share, split_off_validation
from ltstg.errors import LtstgError


def fake_labels(num_classes: int, per_class: int, seed: int = 1) -> np.ndarray:
    """CIFAR-shaped labels in a shuffled order, as in the real training batches."""
    labels = np.repeat(np.arange(num_classes), per_class)
    return np.random.default_rng(seed).permutation(labels)


def ldam_drw_reference(targets: np.ndarray, counts: list[int], seed: int) -> np.ndarray:
    """IMBALANCECIFAR.gen_imbalanced_data as published: the global numpy generator."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        kept = []
        for c, n in zip(np.unique(targets), counts):
            idx = np.where(targets == c)[0]
            np.random.shuffle(idx)
            kept.append(idx[:n])
        return np.concatenate(kept)
    finally:
        np.random.set_state(state)


@pytest.mark.parametrize(
    "num_classes, n_max, totals",
    [(10, 5000, {10: 20431, 50: 13996, 100: 12406}), (100, 500, {10: 19573, 50: 12608, 100: 10847})],
)
def test_cifar_lt_totals(num_classes, n_max, totals):
    labels = fake_labels(num_classes, n_max)
    for imbalance, total in totals.items():
        counts = make_profile(n_max, num_classes, imbalance, "exp")
        kept = select_long_tail(labels, counts, seed=0)
        assert sum(counts) == total
        assert len(kept) == total
        assert np.bincount(labels[kept], minlength=num_classes).tolist() == counts


def test_cifar10_lt_im100_per_class():
    assert make_profile(5000, 10, 100, "exp") == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def test_step_profile_and_balanced():
    assert make_profile(5000, 10, 10, "step") == [5000] * 5 + [500] * 5
    assert make_profile(500, 5, 100, "step") == [500, 500, 5, 5, 5]
    assert make_profile(500, 7, 1, "exp") == [500] * 7
    assert make_profile(500, 7, 1, "step") == [500] * 7
    assert make_profile(30, 1, 10, "exp") == [30]


def test_profile_rejects_bad_arguments():
    with pytest.raises(LtstgError, match="unknown long-tail profile 'linear'; known profiles: exp, step"):
        make_profile(5000, 10, 10, "linear")
    with pytest.raises(LtstgError, match="imbalance"):
        make_profile(5000, 10, 0.5, "exp")


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_selection_matches_ldam_drw(seed):
    labels = fake_labels(10, 500, seed=7)
    counts = make_profile(500, 10, 50, "exp")
    expected = ldam_drw_reference(labels, counts, seed)
    kept = select_long_tail(labels, counts, seed)
    np.testing.assert_array_equal(kept, expected)


def test_selection_deterministic_seeded_and_private():
    labels = fake_labels(10, 500)
    counts = make_profile(500, 10, 100, "exp")
    np.random.seed(99)
    before = np.random.get_state()
    first = select_long_tail(labels, counts, seed=3)
    after = np.random.get_state()
    assert before[0] == after[0] and np.array_equal(before[1], after[1]) and before[2:] == after[2:]
    np.testing.assert_array_equal(first, select_long_tail(labels, counts, seed=3))
    other = select_long_tail(labels, counts, seed=4)
    assert not np.array_equal(np.sort(first), np.sort(other))
    assert len(np.unique(first)) == len(first) == sum(counts)


def test_selection_accepts_torch_labels_and_rejects_short_classes():
    torch = pytest.importorskip("torch")
    labels = fake_labels(3, 10)
    np.testing.assert_array_equal(
        select_long_tail(torch.from_numpy(labels), [10, 5, 1], seed=0), select_long_tail(labels, [10, 5, 1], seed=0)
    )
    with pytest.raises(LtstgError, match="class 1 has 10 images but the long-tail profile asks for 11"):
        select_long_tail(labels, [10, 11, 1], seed=0)
    with pytest.raises(LtstgError, match="profile has 2 classes"):
        select_long_tail(labels, [10, 5], seed=0)


def test_assign_groups_thresholds():
    assert assign_groups([500, 101, 100, 20, 19, 1]) == ["many", "many", "medium", "medium", "few", "few"]
    assert assign_groups([50, 10], many_min=40, few_max=11) == ["many", "few"]


@pytest.mark.parametrize("num_classes, n_max, per_class", [(10, 5000, 100), (100, 500, 20)])
@pytest.mark.parametrize("imbalance", [10, 50, 100])
def test_validation_comes_from_unused_images_and_keeps_cao_counts(num_classes, n_max, per_class, imbalance):
    """k val images per class, disjoint from training; Cao's subset is untouched wherever a class has k unused
    images, and elsewhere only the missing ones leave training (its count drops by exactly that many)."""
    labels = fake_labels(num_classes, n_max)
    counts = make_profile(n_max, num_classes, imbalance, "exp")
    train, val = split_off_validation(labels, counts, per_class, seed=0)
    assert not set(train) & set(val) and len(set(val)) == len(val)
    assert np.bincount(labels[val], minlength=num_classes).tolist() == [per_class] * num_classes
    kept = np.bincount(labels[train], minlength=num_classes)
    cao = select_long_tail(labels, counts, seed=0)
    for c, count in enumerate(counts):
        unused = n_max - count
        assert kept[c] == count - max(per_class - unused, 0), c
        rows = train[labels[train] == c]
        if unused >= per_class:  # Cao et al.'s very images
            np.testing.assert_array_equal(rows, cao[labels[cao] == c])
    assert kept[0] == n_max - per_class  # the largest class keeps everything, so its val images come from training


def test_validation_takes_at_most_a_tenth_of_a_class_s_training_images():
    labels = np.array([0] * 40 + [1] * 9)
    train, val = split_off_validation(labels, [40, 5], per_class=10, seed=0)
    assert np.bincount(labels[train]).tolist() == [36, 5] and np.bincount(labels[val]).tolist() == [4, 4]


def test_stratified_share_takes_one_where_a_class_can_spare_it():
    labels = np.array([0] * 50 + [1] * 9 + [2] * 2 + [3])
    train, val = split_off_share(labels, 4, 0.1, seed=0)
    assert np.bincount(labels[val], minlength=4).tolist() == [5, 1, 1, 0]
    assert np.bincount(labels[train], minlength=4).tolist() == [45, 8, 1, 1]
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(labels)))
    again = split_off_share(labels, 4, 0.1, seed=0)
    np.testing.assert_array_equal(again[1], val)
