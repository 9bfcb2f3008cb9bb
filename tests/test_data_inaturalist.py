"""iNaturalist 2018 from its annotation files: read, checked, and made into a data set of paths."""
import json

import pytest
import torch
from PIL import Image

from ltstg.data import inaturalist
from ltstg.data.inaturalist import read_inaturalist
from ltstg.errors import LtstgError

NAMES = ["Aves:0", "Plantae:1", "Insecta:2"]
TRAIN_PER_CLASS, TEST_PER_CLASS = [30, 12, 4], [2, 2, 2]


def write_inat(root, train=TRAIN_PER_CLASS, test=TEST_PER_CLASS, *, damage=None):
    """A tiny tree in the published layout: train_val2018/<super>/<id>/<n>.jpg and two COCO-style files."""
    image_id = 0
    for split, per_class in (("train2018.json", train), ("val2018.json", test)):
        images, notes = [], []
        for category, count in enumerate(per_class):
            for n in range(count):
                name = f"train_val2018/{NAMES[category].split(':')[0]}/{category}/{split[:3]}{n}.jpg"
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20, 16), (40 * category, 5 * n, 90)).save(root / name)
                images.append({"id": image_id, "file_name": name, "width": 20, "height": 16})
                notes.append({"id": 1000 + image_id, "image_id": image_id, "category_id": category})
                image_id += 1
        data = {"images": images, "annotations": notes,
                "categories": [{"id": c, "name": name, "supercategory": name.split(":")[0]} for c, name in enumerate(NAMES)]}
        if damage is not None:
            damage(split, data)
        (root / split).write_text(json.dumps(data))
    return root


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(inaturalist, "NUM_CLASSES", len(NAMES))
    monkeypatch.setattr(inaturalist, "COUNTS", {"train": sum(TRAIN_PER_CLASS), "test": sum(TEST_PER_CLASS)})


def test_both_splits_become_paths_and_labels_with_the_category_names(tmp_path, tiny):
    source = read_inaturalist(str(write_inat(tmp_path)))
    assert source.name == "inat2018" and source.class_names == tuple(NAMES)
    assert torch.bincount(source.splits["train"].labels).tolist() == TRAIN_PER_CLASS
    assert torch.bincount(source.splits["test"].labels).tolist() == TEST_PER_CLASS
    assert source.splits["train"].paths[0] == "train_val2018/Aves/0/tra0.jpg" and "val" not in source.splits
    assert read_inaturalist(str(tmp_path)).fingerprint == source.fingerprint
    (tmp_path / source.splits["test"].paths[0]).write_bytes(b"changed")  # the fingerprint covers file sizes
    assert read_inaturalist(str(tmp_path)).fingerprint != source.fingerprint


@pytest.mark.parametrize("damage, message", [
    (lambda split, data: data["annotations"].pop(), "1 images have no annotation"),
    (lambda split, data: data["annotations"][0].update(category_id=7), r"category ids \[7\] lie outside 0..2"),
    (lambda split, data: data.pop("images"), "lacks iNaturalist 2018's images / annotations / categories layout"),
])
def test_a_damaged_annotation_file_is_one_line(tmp_path, tiny, damage, message):
    write_inat(tmp_path, damage=damage)
    with pytest.raises(LtstgError, match=message) as error:
        read_inaturalist(str(tmp_path))
    assert "\n" not in str(error.value)


def test_wrong_counts_missing_files_and_missing_annotations_are_clear(tmp_path, tiny, monkeypatch):
    write_inat(tmp_path)
    monkeypatch.setattr(inaturalist, "COUNTS", {"train": 437_513, "test": 24_426})
    with pytest.raises(LtstgError, match="train2018.json in .* lists 46 images but the iNaturalist 2018 train set has 437,513"):
        read_inaturalist(str(tmp_path))
    assert len(read_inaturalist(str(tmp_path), expected=None).splits["train"].paths) == 46
    (tmp_path / "train_val2018/Aves/0/val1.jpg").unlink()
    with pytest.raises(LtstgError, match=r"1 images listed .* cannot be read .*\(1 missing; first: .*val1.jpg"):
        read_inaturalist(str(tmp_path), expected=None)
    with pytest.raises(LtstgError, match="annotation file .*train2018.json not found; pass --split-dir"):
        read_inaturalist(str(tmp_path), str(tmp_path / "nowhere"), expected=None)
    (tmp_path / "val2018.json").write_text("{not json")
    with pytest.raises(LtstgError, match="val2018.json is not a readable JSON annotation file"):
        read_inaturalist(str(tmp_path), expected=None, check_files=False)


def test_make_dataset_keeps_paths_takes_validation_from_training_and_the_images_load(tmp_path, tiny):
    from ltstg.recipe import load_recipe
    from ltstg.stages import Context, steps
    from ltstg.stages.pretrain import image_inputs
    from ltstg.store import Store

    write_inat(tmp_path / "inat")
    recipe = load_recipe(None, {"dataset.source": "inat2018", "dataset.root": str(tmp_path / "inat"), "dataset.size": 16,
                                "dataset.val_per_class": 2})
    dataset = steps.dataset_step(Context(store=Store(tmp_path / "store")), recipe).artifact
    assert dataset.info["storage"] == "paths" and "train_images" not in dataset.tensors
    assert dataset.info["protocol"] == "published annotation files" and dataset.info["val_origin"].startswith("2 per class")
    val = torch.bincount(dataset["val_labels"], minlength=3).tolist()
    assert dataset["class_counts"].tolist() == [t - v for t, v in zip(TRAIN_PER_CLASS, val)]  # carved out of train
    assert val[0] == 2 and val[2] == 0  # at most a tenth of a class: 4 images spare none (said in a note)
    assert any("under 2 validation images" in note for note in dataset.meta["notes"])
    assert torch.bincount(dataset["test_labels"]).tolist() == TEST_PER_CLASS
    inputs = image_inputs(dataset, torch.device("cpu"), workers=0)
    images, labels = next(iter(inputs.eval_batches("test", 4)))
    assert images.shape == (4, 3, 16, 16) and labels.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("damage, message", [
    (lambda split, data: data["annotations"][0].update(category_id=1.7), "category_id 1.7 is not an integer"),
    (lambda split, data: data["annotations"][0].update(category_id=True), "category_id True is not an integer"),
    (lambda split, data: data["images"][0].update(id="0"), "image id '0' is not an integer"),
    (lambda split, data: data["images"][1].update(id=data["images"][0]["id"]), "1 image ids appear more than once"),
    (lambda split, data: data["images"][1].update(file_name=data["images"][0]["file_name"]),
     "1 file names appear more than once"),
])
def test_34_ids_that_are_not_integers_or_repeat_are_refused(tmp_path, tiny, damage, message):
    """Issue 34 (smaller ones): int() read `1.7` and `true` as category 1, and a repeated id or file name passed."""
    write_inat(tmp_path, damage=lambda split, data: damage(split, data) if split == "train2018.json" else None)
    with pytest.raises(LtstgError, match=message) as error:
        read_inaturalist(str(tmp_path), expected=None)
    assert "\n" not in str(error.value)


def test_34_09_file_names_that_cannot_be_files_are_listed_in_one_error_with_their_count(tmp_path, tiny):
    """A name through a file, one too long for the file system, one with a NUL byte: counted by reason, one line."""
    bad = ["train_val2018/Aves/0/tra0.jpg/inside.jpg", "train_val2018/" + "x" * 300 + ".jpg", "train_val2018/a\0b.jpg"]

    def damage(split, data):
        if split == "train2018.json":
            for image, name in zip(data["images"], bad):
                image["file_name"] = name

    write_inat(tmp_path, damage=damage)
    with pytest.raises(LtstgError) as error:
        read_inaturalist(str(tmp_path), expected=None)
    message = str(error.value)
    assert message.startswith("3 images listed in the iNaturalist 2018 split lists cannot be read") and "\n" not in message
    assert "1 Not a directory" in message and "1 File name too long" in message and "embedded null" in message
