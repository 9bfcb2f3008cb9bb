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
