"""The Cao et al. counts and the LDAM-DRW selection, index for index."""
import numpy as np
import pytest

from ltstg.data.longtail import assign_groups, make_profile, select_long_tail
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
