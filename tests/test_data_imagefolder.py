"""Image-folder listing and decoding: mixed modes and sizes, bad files, wrong trees."""
import warnings

import pytest
import torch
from PIL import Image

from ltstg.data.imagefolder import decode_images, list_imagefolder
from ltstg.errors import LtstgError

RED, GRAY = (200, 30, 40), 100


def solid(mode, size, colour):
    return Image.new(mode, size, colour)


@pytest.fixture
def tree(tmp_path):
    """train/{cat,dog}, test/{cat,dog}, val/{cat,dog} with every awkward kind of file in train/dog."""
    for folder in ("train/cat", "train/dog", "test/cat", "test/dog", "val/cat", "val/dog"):
        (tmp_path / folder).mkdir(parents=True)
    solid("RGB", (32, 32), RED).save(tmp_path / "train/cat/b_red.png")
    solid("L", (32, 32), GRAY).save(tmp_path / "train/cat/a_gray.png")
    (tmp_path / "train/cat/.DS_Store").write_bytes(b"hidden")
    dog = tmp_path / "train/dog"
    solid("RGBA", (32, 32), (*RED, 0)).save(dog / "1_rgba.png")
    palette = solid("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, *RED] + [0] * 762)
    palette.save(dog / "2_palette.png", transparency=0)
    solid("RGB", (32, 32), RED).save(dog / "3_photo.jpg", quality=95)
    solid("RGB", (50, 20), RED).save(dog / "4_wide.png")
    solid("CMYK", (32, 32), (0, 255, 255, 0)).save(dog / "5_cmyk.jpg", quality=95)
    (dog / "6_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    (dog / "7_empty.png").write_bytes(b"")
    (dog / "nested").mkdir()
    solid("RGB", (32, 32), RED).save(dog / "nested/8_deep.png")
    solid("RGB", (32, 32), RED).save(tmp_path / "test/cat/x.png")
    solid("RGB", (32, 32), RED).save(tmp_path / "test/dog/y.png")
    solid("RGB", (32, 32), RED).save(tmp_path / "val/cat/z.png")
    solid("RGB", (32, 32), RED).save(tmp_path / "val/dog/y.png")
    return tmp_path


def test_listing_is_sorted_and_labelled(tree):
    source = list_imagefolder(str(tree))
    assert source.name == "imagefolder" and source.class_names == ("cat", "dog")
    assert source.root == str(tree) and set(source.splits) == {"train", "test", "val"}
    train = source.splits["train"]
    assert train.paths[:2] == ("train/cat/a_gray.png", "train/cat/b_red.png")
    assert train.paths[2:] == tuple(
        f"train/dog/{name}" for name in
        ["1_rgba.png", "2_palette.png", "3_photo.jpg", "4_wide.png", "5_cmyk.jpg", "6_corrupt.jpg", "7_empty.png",
         "nested/8_deep.png"]
    )
    assert train.labels.dtype == torch.int64 and train.labels.tolist() == [0, 0] + [1] * 8
    assert train.images is None
    assert source.splits["val"].labels.tolist() == [0, 1]
    assert list_imagefolder(str(tree)).fingerprint == source.fingerprint
    reordered = list_imagefolder(str(tree), classes=["dog", "cat"])
    assert reordered.class_names == ("dog", "cat")
    assert reordered.splits["test"].paths == ("test/dog/y.png", "test/cat/x.png")
    assert reordered.splits["test"].labels.tolist() == [0, 1] and reordered.fingerprint != source.fingerprint
    (tree / "train/cat/a_gray.png").write_bytes(b"changed size")
    assert list_imagefolder(str(tree)).fingerprint != source.fingerprint


def test_decode_mixed_modes_sizes_and_bad_files(tree):
    source = list_imagefolder(str(tree))
    paths = source.splits["train"].paths
    calls = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, keep, unreadable = decode_images(
            source.root, paths, 16, progress=lambda *args, **metrics: calls.append(args)
        )
    assert [path for path, _ in unreadable] == ["train/dog/6_corrupt.jpg", "train/dog/7_empty.png"]
    assert unreadable[1][1] == "empty file" and "Truncated" in unreadable[0][1]
    assert keep.tolist() == [True] * 7 + [False, False, True]
    assert images.dtype == torch.uint8 and images.shape == (8, 16, 16, 3)
    assert calls[-1] == ("decode images", 10, 10)
    assert (images[0] == GRAY).all()  # grayscale becomes three equal channels
    for index in (1, 2, 3, 5, 7):  # RGB, RGBA (alpha dropped), palette with transparency, resized 50×20, nested
        assert (images[index] == torch.tensor(RED, dtype=torch.uint8)).all(), paths[index]
    assert (images[4].int() - torch.tensor(RED)).abs().max() <= 12  # JPEG is lossy
    cmyk = images[6].float().mean(dim=(0, 1))
    assert cmyk[0] > 200 and cmyk[1] < 60 and cmyk[2] < 60  # CMYK (0, 255, 255, 0) is red


def test_decode_a_clean_split_keeps_everything(tree):
    source = list_imagefolder(str(tree))
    images, keep, unreadable = decode_images(source.root, source.splits["test"].paths, 32)
    assert keep.all() and unreadable == [] and images.shape == (2, 32, 32, 3)


def test_decode_reports_every_thousand(tmp_path):
    Image.new("RGB", (8, 8), RED).save(tmp_path / "one.png")
    calls = []
    images, keep, _ = decode_images(str(tmp_path), ["one.png"] * 2500, 8,
                                    progress=lambda *args, **metrics: calls.append(args))
    assert [done for _, done, _ in calls] == [1000, 2000, 2500] and images.shape == (2500, 8, 8, 3)


def test_wrong_roots(tmp_path):
    with pytest.raises(LtstgError, match="does not exist"):
        list_imagefolder(str(tmp_path / "nowhere"))
    (tmp_path / "train").mkdir()
    with pytest.raises(LtstgError, match="has no test/ folder"):
        list_imagefolder(str(tmp_path))
    (tmp_path / "test").mkdir()
    with pytest.raises(LtstgError, match="train has no class folders"):
        list_imagefolder(str(tmp_path))
    (tmp_path / "train/cat").mkdir()
    with pytest.raises(LtstgError, match="train/cat holds no images"):
        list_imagefolder(str(tmp_path))
    Image.new("RGB", (8, 8), RED).save(tmp_path / "train/cat/a.png")
    (tmp_path / "test/cow").mkdir()
    with pytest.raises(LtstgError, match="test/cow is a class absent from train/"):
        list_imagefolder(str(tmp_path))
    (tmp_path / "test/cow").rmdir()
    with pytest.raises(LtstgError, match="class 'dog' has no folder in"):
        list_imagefolder(str(tmp_path), classes=["cat", "dog"])
    assert list_imagefolder(str(tmp_path)).splits["test"].paths == ()


def test_an_image_folder_kept_as_paths_stores_no_image_and_reads_its_files(tmp_path):
    """dataset.storage=paths (issue 24): a folder too large to hold decoded keeps its file paths, like the split
    lists; the images are decoded when a stage reads them, and the decoded data set is another artifact."""
    from ltstg.recipe import load_recipe
    from ltstg.stages import Context, steps
    from ltstg.stages.pretrain import image_inputs
    from ltstg.store import Store

    for split, per_class in (("train", (12, 4)), ("test", (2, 2))):
        for label, count in enumerate(per_class):
            (tmp_path / "tree" / split / f"c{label}").mkdir(parents=True)
            for n in range(count):
                solid("RGB", (24, 20), (100 * label, 10 * n, 50)).save(tmp_path / "tree" / split / f"c{label}" / f"{n}.png")
    ctx = Context(store=Store(tmp_path / "store"))
    settings = {"dataset.source": "imagefolder", "dataset.root": str(tmp_path / "tree"), "dataset.imbalance": 1,
                "dataset.size": 16}
    as_paths = steps.dataset_step(ctx, load_recipe(None, {**settings, "dataset.storage": "paths"})).artifact
    decoded = steps.dataset_step(ctx, load_recipe(None, settings)).artifact
    assert as_paths.info["storage"] == "paths" and not any(name.endswith("_images") for name in as_paths.tensors)
    assert decoded.info["storage"] == "images" and as_paths.id != decoded.id
    assert torch.equal(as_paths["train_labels"], decoded["train_labels"])  # the same selection either way
    images, labels = next(iter(image_inputs(as_paths, torch.device("cpu"), workers=0).eval_batches("test", 4)))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1]
    with pytest.raises(LtstgError, match="dataset.storage=paths: the synthetic source has no image files"):
        steps.dataset_step(ctx, load_recipe(None, {"dataset.storage": "paths"}))
