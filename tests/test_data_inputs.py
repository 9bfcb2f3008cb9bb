import pytest
import torch
from PIL import Image

from ltstg.data.inputs import STATS_BYTES, FileInputs, TensorInputs, channel_stats, stats_chunk


def write_images(root, count):
    paths = []
    for i in range(count):
        path = f"c{i % 2}/{i}.png"
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        colour = (i * 20 % 255, 255 - i * 10 % 255, 40)
        Image.new("RGB", (40 + i, 30), colour).save(root / path)
        paths.append(path)
    return paths


def test_file_inputs_are_seeded_and_leave_the_global_rng_alone(tmp_path):
    paths = write_images(tmp_path, 6)
    labels = torch.tensor([i % 2 for i in range(6)])
    inputs = FileInputs(str(tmp_path), {"train": (paths, labels), "test": (paths, labels)}, 16, torch.device("cpu"), workers=0)
    state = torch.random.get_rng_state()

    def epoch(seed):
        generator = torch.Generator().manual_seed(seed)
        return [(x.clone(), y.clone()) for x, y in inputs.train_batches(2, generator)]

    first, again, other = epoch(0), epoch(0), epoch(1)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    assert first[0][0].shape == (2, 3, 16, 16) and sum(len(y) for _, y in first) == 6
    views = list(inputs.view_batches(4, torch.Generator().manual_seed(0)))
    assert [v.shape[0] for v in views] == [4, 2]
    test = list(inputs.eval_batches("test", 4))
    assert torch.equal(torch.cat([y for _, y in test]), labels) and test[0][0].shape == (4, 3, 16, 16)


def test_file_inputs_draw_the_same_crops_with_any_worker_count(tmp_path):
    paths = write_images(tmp_path, 6)
    labels = torch.tensor([i % 2 for i in range(6)])
    splits = {"train": (paths, labels)}
    epochs = []
    for workers in (0, 2):
        inputs = FileInputs(str(tmp_path), splits, 16, torch.device("cpu"), workers=workers)
        generator = torch.Generator().manual_seed(0)
        epochs.append([x for x, _ in inputs.train_batches(2, generator)] + list(inputs.view_batches(4, generator)))
    assert len(epochs[0]) == len(epochs[1]) == 5
    assert all(torch.equal(a, b) for a, b in zip(*epochs))


def test_train_steps_count_the_batches_an_epoch_yields(tmp_path):
    for count, batch_size, world_size in ((10, 4, 1), (9, 4, 1), (9, 4, 2), (11, 4, 2), (12, 4, 2), (13, 4, 1), (10, 2, 2)):
        images = torch.randint(0, 256, (count, 8, 8, 3), dtype=torch.uint8)
        inputs = TensorInputs({"train": (images, torch.arange(count))}, torch.device("cpu"))
        yielded = len(list(inputs.train_batches(batch_size, torch.Generator().manual_seed(0), 0, world_size)))
        assert inputs.train_steps(batch_size, world_size) == yielded, (count, batch_size, world_size)
    paths = write_images(tmp_path, 7)
    inputs = FileInputs(str(tmp_path), {"train": (paths, torch.zeros(7, dtype=torch.long))}, 16, torch.device("cpu"), workers=0)
    for batch_size, world_size in ((2, 1), (4, 1), (4, 2), (2, 2), (8, 1)):  # 8 > 7 images: no step
        yielded = len(list(inputs.train_batches(batch_size, torch.Generator().manual_seed(0), 0, world_size)))
        assert inputs.train_steps(batch_size, world_size) == yielded, (batch_size, world_size)


def test_tensor_inputs_shard_a_global_batch_between_ranks():
    images = torch.randint(0, 256, (10, 8, 8, 3), dtype=torch.uint8)
    labels = torch.arange(10)
    inputs = TensorInputs({"train": (images, labels)}, torch.device("cpu"))
    whole = list(inputs.train_batches(4, torch.Generator().manual_seed(0)))
    ranks = [list(inputs.train_batches(4, torch.Generator().manual_seed(0), rank, 2)) for rank in (0, 1)]
    assert len(whole) == 3 and len(ranks[0]) == len(ranks[1]) == 2  # a last batch too small to split is skipped
    for step, (x, y) in enumerate(whole[:2]):
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]).sort().values, y.sort().values)
        assert torch.equal(ranks[0][step][0], x[0::2]) and torch.equal(ranks[1][step][0], x[1::2])


def test_channel_stats_match_a_direct_computation():
    images = torch.randint(0, 256, (20, 5, 5, 3), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=7)
    direct = images.double().div(255).reshape(-1, 3)
    assert torch.allclose(torch.tensor(mean, dtype=torch.float64), direct.mean(0))
    assert torch.allclose(torch.tensor(std, dtype=torch.float64), direct.std(0, unbiased=False))


def test_channel_statistics_are_chunked_by_bytes_not_by_images():
    assert stats_chunk((32, 32, 3)) == 10922 and stats_chunk((224, 224, 3)) == 222
    assert stats_chunk((224, 224, 3)) * 224 * 224 * 3 * 8 <= STATS_BYTES < (stats_chunk((224, 224, 3)) + 1) * 224 * 224 * 3 * 8
    assert stats_chunk((100000, 100000, 3)) == 1  # one image at least, however large
    images = torch.randint(0, 256, (9, 6, 6, 3), dtype=torch.uint8)
    (mean, std), (mean_2, std_2) = channel_stats(images), channel_stats(images, chunk=2)
    assert mean == pytest.approx(mean_2) and std == pytest.approx(std_2)


def test_the_normalisation_statistics_reach_the_device_once_not_per_batch(monkeypatch):
    """On a GPU, a tuple turned into a tensor on the device is a blocking host-to-device copy; the batches of a
    TensorInputs epoch must make none (issue 23, row 1)."""
    images = torch.randint(0, 256, (12, 8, 8, 3), dtype=torch.uint8)
    inputs = TensorInputs({"train": (images, torch.arange(12) % 3), "test": (images[:5], torch.arange(5) % 3)},
                          torch.device("cpu"))
    real, from_python = torch.as_tensor, []

    def spy(data, *args, **kwargs):
        if not isinstance(data, torch.Tensor):
            from_python.append(data)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(torch, "as_tensor", spy)
    list(inputs.train_batches(4, torch.Generator().manual_seed(0)))
    list(inputs.eval_batches("test", 2))
    list(inputs.view_batches(4, torch.Generator().manual_seed(0)))
    assert from_python == []


def test_an_image_drawn_twice_in_one_pass_gets_two_crops(tmp_path):
    """Class-aware order repeats tail images within a pass (the BatchNorm shift); each draw is augmented anew."""
    paths = write_images(tmp_path, 4)
    noise = torch.randint(0, 256, (30, 40, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    Image.fromarray(noise.numpy()).save(tmp_path / paths[3])  # texture, so that two crops differ
    labels = torch.tensor([0, 1, 0, 1])
    inputs = FileInputs(str(tmp_path), {"train": (paths, labels)}, 16, torch.device("cpu"), workers=0)
    order = torch.tensor([3] * 8)
    batch = torch.cat(list(inputs.sample_batches(order, 4, torch.Generator().manual_seed(0))))  # (8, 3, 16, 16)
    assert batch.shape[0] == 8 and len({tuple(image.flatten()[:64].tolist()) for image in batch}) > 1
    again = torch.cat(list(inputs.sample_batches(order, 4, torch.Generator().manual_seed(0))))
    assert torch.equal(batch, again)  # seeded


def test_files_reach_the_device_as_uint8_and_are_normalised_there_exactly_as_torchvision_would(tmp_path):
    """uint8 through the workers, the pinned buffer and the copy: a quarter of float32's bytes (issue 23, row 8)."""
    from torchvision.transforms import v2

    from ltstg.data.inputs import IMAGENET_MEAN, IMAGENET_STD

    paths = write_images(tmp_path, 5)
    labels = torch.tensor([0, 1, 0, 1, 0])
    inputs = FileInputs(str(tmp_path), {"test": (paths, labels), "train": (paths, labels)}, 16, torch.device("cpu"),
                        workers=0)
    assert inputs._loader.dataset[("test", 0, None)][0].dtype == torch.uint8
    floats = v2.Compose([v2.Resize(19), v2.CenterCrop(16), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
                         v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    with Image.open(tmp_path / paths[3]) as image:
        expected = floats(image.convert("RGB"))
    batch = torch.cat([x for x, _ in inputs.eval_batches("test", 2)])
    assert batch.dtype == torch.float32 and torch.equal(batch[3], expected)


def test_one_loader_with_persistent_workers_serves_every_pass(tmp_path, monkeypatch):
    import ltstg.data.inputs as inputs_module

    made = []

    class Counting(inputs_module.DataLoader):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(inputs_module, "DataLoader", Counting)
    paths = write_images(tmp_path, 6)
    labels = torch.tensor([i % 2 for i in range(6)])
    inputs = FileInputs(str(tmp_path), {"train": (paths, labels), "test": (paths, labels)}, 16, torch.device("cpu"),
                        workers=1)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        assert sum(len(y) for _, y in inputs.train_batches(2, generator)) == 6
        assert sum(len(y) for _, y in inputs.eval_batches("test", 4)) == 6
    assert len(list(inputs.view_batches(4, generator))) == 2
    assert len(made) == 1 and made[0]["persistent_workers"] is True and made[0]["num_workers"] == 1


@pytest.mark.parametrize("workers", [0, 1])
def test_a_pass_resumed_after_another_one_started_is_an_error_not_the_other_pass_batches(tmp_path, workers):
    """Passes share one loader (and, with workers, one iterator): an older pass never draws the newer one's
    batches, whether the newer one is under way or done."""
    paths = write_images(tmp_path, 6)
    labels = torch.tensor([i % 2 for i in range(6)])
    inputs = FileInputs(str(tmp_path), {"train": (paths, labels), "test": (paths, labels)}, 16, torch.device("cpu"),
                        workers=workers)
    train = inputs.train_batches(2, torch.Generator().manual_seed(0))
    next(train)
    evaluation = inputs.eval_batches("test", 2)
    next(evaluation)
    with pytest.raises(RuntimeError, match="another one started"):
        next(train)
    assert sum(len(y) for _, y in evaluation) == 4  # the newer pass lost nothing to the older one
    train = inputs.train_batches(2, torch.Generator().manual_seed(0))
    next(train)
    assert sum(len(y) for _, y in inputs.eval_batches("test", 4)) == 6
    with pytest.raises(RuntimeError, match="another one started"):
        next(train)


@pytest.mark.parametrize("cores, ranks_here, expected", [(2, 1, 1), (16, 1, 15), (16, 2, 7), (96, 1, 16), (1, 1, 1)])
def test_loader_workers_follow_the_cores_shared_among_the_ranks_on_the_node(monkeypatch, cores, ranks_here, expected):
    from ltstg.data.inputs import default_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks_here))
    monkeypatch.setattr("ltstg.ranks.distributed", lambda: True)
    assert default_workers() == expected
    monkeypatch.setattr("ltstg.ranks.distributed", lambda: False)  # the first rank alone after stage 1
    assert default_workers() == max(1, min(16, cores - 1))
