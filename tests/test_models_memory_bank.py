"""Tests for ltstg.models.memory_bank."""
import torch

from ltstg.models.memory_bank import MemoryBank


def _batch(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (id, −id) and label id % 3, so every field shows which sample it came from."""
    sample_ids = torch.tensor(ids, dtype=torch.long)
    features = torch.stack([sample_ids.float(), -sample_ids.float()], dim=1)  # (n, 2)
    return features, sample_ids % 3, sample_ids


def _assert_holds(bank: MemoryBank, ids: list[int]) -> None:
    for got, expected in zip(bank.contents(), _batch(ids)):
        assert torch.equal(got, expected)


def test_fills_in_order_then_wraps_around_dropping_the_oldest():
    bank = MemoryBank(4, 2)
    _assert_holds(bank, [])
    bank.push(*_batch([0, 1, 2]))
    _assert_holds(bank, [0, 1, 2])
    bank.push(*_batch([3, 4, 5]))
    _assert_holds(bank, [2, 3, 4, 5])
    bank.push(*_batch([6]))
    _assert_holds(bank, [3, 4, 5, 6])
    bank.push(*_batch([7, 8, 9, 10]))
    _assert_holds(bank, [7, 8, 9, 10])


def test_batch_larger_than_size_keeps_the_newest():
    bank = MemoryBank(4, 2)
    bank.push(*_batch([0]))
    bank.push(*_batch([10, 11, 12, 13, 14, 15]))
    _assert_holds(bank, [12, 13, 14, 15])
    bank.push(*_batch([16]))
    _assert_holds(bank, [13, 14, 15, 16])


def test_size_zero_is_always_empty():
    bank = MemoryBank(0, 2)
    bank.push(*_batch([0, 1, 2]))
    features, labels, sample_ids = bank.contents()
    assert features.shape == (0, 2) and labels.shape == (0,) and sample_ids.shape == (0,)


def test_push_stores_a_detached_copy():
    bank = MemoryBank(2, 2)
    features, labels, ids = _batch([0, 1])
    features = features.clone().requires_grad_()
    bank.push(features, labels, ids)
    stored, _, _ = bank.contents()
    assert not stored.requires_grad
    with torch.no_grad():
        features.add_(100.0)
    assert torch.equal(bank.contents()[0], _batch([0, 1])[0])


def test_state_dict_round_trip_continues_exactly():
    bank = MemoryBank(4, 2)
    bank.push(*_batch([0, 1, 2]))
    bank.push(*_batch([3, 4]))
    state = bank.state_dict()
    assert set(state) == {"features", "labels", "sample_ids", "pointer", "count"}
    resumed = MemoryBank(4, 2)
    resumed.load_state_dict(state)
    _assert_holds(resumed, [1, 2, 3, 4])
    bank.push(*_batch([5]))
    resumed.push(*_batch([5]))
    _assert_holds(resumed, [2, 3, 4, 5])
    for original, copy in zip(bank.contents(), resumed.contents()):
        assert torch.equal(original, copy)


def test_reading_the_contents_does_not_read_the_count_off_the_device(monkeypatch):
    """`int(count)` is a host sync per STG step on a GPU (issue 23, row 10): the bank keeps the count on the
    host too and reads the device once, after a checkpoint was loaded."""
    bank = MemoryBank(4, 2)
    reads = []
    real = torch.Tensor.__int__
    monkeypatch.setattr(torch.Tensor, "__int__", lambda self: reads.append(1) or real(self))
    for ids in ([0, 1, 2], [3, 4], [5]):
        bank.push(*_batch(ids))
        bank.contents()
    assert reads == []
    _assert_holds(bank, [2, 3, 4, 5])
    resumed = MemoryBank(4, 2)
    resumed.load_state_dict(bank.state_dict())
    _assert_holds(resumed, [2, 3, 4, 5])
    resumed.push(*_batch([6]))
    _assert_holds(resumed, [3, 4, 5, 6])
    assert len(reads) == 1  # once after the load


def test_running_class_sums_follow_the_entries_in_and_out_and_survive_a_checkpoint():
    """fit-stg reads per-class sums of the memory instead of its entries (issue 24); they must equal the sums
    of what the ring holds after any pushes, wrapping and a batch larger than the ring included."""
    g = torch.Generator().manual_seed(0)
    num_classes, num_samples, dim = 5, 40, 3
    bank = MemoryBank(7, dim, num_classes=num_classes, num_samples=num_samples)
    values = torch.randn(num_samples, dim, generator=g)  # frozen features: one per sample id
    labels = torch.randint(0, num_classes, (num_samples,), generator=g)

    def expected(held):
        x, t, ids = held
        sums = torch.zeros(num_classes, dim, dtype=torch.float64).index_add_(0, t, x.double())
        squares = torch.zeros(num_classes, dim, dtype=torch.float64).index_add_(0, t, x.double().square())
        return sums, squares, torch.bincount(t, minlength=num_classes), torch.bincount(ids, minlength=num_samples)

    for size in (3, 2, 4, 9, 1, 5):
        ids = torch.randint(0, num_samples, (size,), generator=g)
        bank.push(values[ids], labels[ids], ids)
        sums, squares, counts, copies = expected(bank.contents())
        assert torch.allclose(bank.class_sums, sums) and torch.allclose(bank.class_squares, squares)
        assert torch.equal(bank.class_counts, counts) and torch.equal(bank.copies, copies)
    state = bank.state_dict()
    assert "class_sums" not in state and "copies" not in state  # derived: checkpoints keep only the ring
    resumed = MemoryBank(7, dim, num_classes=num_classes, num_samples=num_samples)
    resumed.load_state_dict(state)
    assert torch.allclose(resumed.class_sums, bank.class_sums) and torch.equal(resumed.copies, bank.copies)
