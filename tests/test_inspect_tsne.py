"""Tests for ltstg.inspect.tsne."""
import numpy as np
import pytest
import torch
from fakes import gaussian_features
from PIL import Image

from ltstg.errors import LtstgError
from ltstg.inspect.tsne import GRID, MIN_PER_CLASS, decision_cells, shown_classes, stratified_sample, tsne_figure
from ltstg.models.prototypes import class_means
from ltstg.stages.fit_stg import build_stg
from ltstg.store import Artifact, Store

DIM = 16
COUNTS = [150, 120, 40, 15, 6, 6]  # head: 0, 1 (> 100); tail: 2-5
HEAD = [0, 1]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_features(counts=COUNTS, *, dim=DIM, seed=0) -> Artifact:
    return gaussian_features(counts, dim=dim, seed=seed, spread=4.0)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """Features, a random STG in fit-stg's layout and two classifiers, written and read back by the store."""
    features = make_features()
    store = Store(tmp_path_factory.mktemp("tsne") / "store")
    model = build_stg(DIM, len(HEAD), hidden=32, depth=2, token_std=0.02, var_activation="softplus", seed=0)
    tensors = {f"stg.{k}": v.clone() for k, v in model.state_dict().items()}
    tensors["head_classes"] = torch.tensor(HEAD)
    tensors["head_prototypes"] = class_means(features["train_features"], features["train_labels"], torch.tensor(HEAD))
    info = {"num_features": DIM, "num_tokens": len(HEAD), "hidden": 32, "depth": 2,
            "var_activation": "softplus", "token_std": 0.02}
    store.put("5" * 64, tensors, {"kind": "stg", "info": info})
    centres = class_means(features["train_features"], features["train_labels"], torch.arange(len(COUNTS)))
    classifiers = []
    for index, (method, bias) in enumerate([("cRT", 0.0), ("cRT+STG", 1.0)]):
        weight, offset = centres, -centres.square().sum(dim=1) / 2 + bias * torch.arange(len(COUNTS))
        artifact_id = str(index + 1) * 64
        store.put(artifact_id, {"weight": weight, "bias": offset}, {"kind": "classifier", "info": {"method": method}})
        classifiers.append(store.get(artifact_id, "classifier"))
    return features, store.get("5" * 64, "stg"), classifiers


def test_features_only_picture_has_the_requested_size(artifacts, tmp_path):
    features, _, _ = artifacts
    out = tmp_path / "pictures" / "tsne.png"
    summary = tsne_figure(features, out, max_points=120, size=(640, 480), seed=0)
    assert out.stat().st_size > 1000
    with Image.open(out) as image:
        assert image.size == (640, 480)
        pixels = np.asarray(image.convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # points were drawn, not a blank canvas
    assert summary["points"] == 120 and summary["augmented_points"] == 0 and summary["panels"] == 1
    assert summary["size"] == [640, 480] and summary["seconds"] > 0


def test_augmentations_and_classifier_panels(artifacts, tmp_path):
    features, stg, classifiers = artifacts
    out = tmp_path / "tsne.png"
    summary = tsne_figure(
        features, out, stg=stg, classifiers=classifiers, max_points=120, augment_per_sample=2, size=(900, 500)
    )
    with Image.open(out) as image:
        assert image.size == (900, 500)
    # quota 31: 31 + 31 + 31 + 15 + 6 + 6 real points, 58 of them in tail classes 2-5;
    # at most 120 // 2 augmented points, so 30 tail samples get 2 draws each
    assert summary["points"] == 120
    assert summary["augmented_points"] == 60
    assert summary["panels"] == 3


def test_stratified_sample_keeps_rare_classes_whole_and_caps_the_rest():
    labels = torch.repeat_interleave(torch.arange(len(COUNTS)), torch.tensor(COUNTS))
    rows = stratified_sample(labels, len(COUNTS), 60, torch.Generator().manual_seed(0))
    # water-filling: 6 + 6 kept whole, the other four classes get (60 - 12) // 4 = 12 each
    assert torch.bincount(labels[rows], minlength=len(COUNTS)).tolist() == [12, 12, 12, 12, 6, 6]
    assert rows.unique().numel() == rows.numel()
    again = stratified_sample(labels, len(COUNTS), 60, torch.Generator().manual_seed(0))
    other = stratified_sample(labels, len(COUNTS), 60, torch.Generator().manual_seed(1))
    assert torch.equal(rows, again) and not torch.equal(rows, other)
    everything = stratified_sample(labels, len(COUNTS), 10_000, torch.Generator().manual_seed(0))
    assert torch.equal(everything, torch.arange(labels.numel()))


def test_stg_of_another_feature_size_is_an_error_before_any_file(artifacts, tmp_path):
    _, stg, _ = artifacts
    out = tmp_path / "tsne.png"
    with pytest.raises(LtstgError, match="16-dimensional features but these are 8-dimensional"):
        tsne_figure(make_features(dim=8), out, stg=stg)
    assert not out.exists()


def test_bad_classifier_size_and_caps_are_errors(artifacts, tmp_path):
    features, _, classifiers = artifacts
    wrong = Artifact("9" * 64, {"kind": "classifier", "info": {}},
                     {"weight": torch.zeros(len(COUNTS), 8), "bias": torch.zeros(len(COUNTS))})
    with pytest.raises(LtstgError, match=r"need \(6, 16\)"):
        tsne_figure(features, tmp_path / "a.png", classifiers=[classifiers[0], wrong])
    with pytest.raises(LtstgError, match="at least 200x200"):
        tsne_figure(features, tmp_path / "b.png", size=(100, 900))
    with pytest.raises(LtstgError, match="max_points must be >= 1"):
        tsne_figure(features, tmp_path / "c.png", max_points=0)
    assert not any(tmp_path.iterdir())


def test_decision_cells_take_the_prediction_of_the_nearest_embedded_point():
    points = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    predicted = np.array([4, 1, 2])  # the classifier's classes, not the true labels
    cells = decision_cells(points, predicted, (-1.0, 11.0, -1.0, 11.0))
    assert cells.shape == (GRID, GRID)
    assert cells[0, 0] == 4 and cells[0, -1] == 1 and cells[-1, 0] == 2  # row 0 is the bottom
    assert cells[-1, -1] in (1, 2) and set(np.unique(cells)) == {1, 2, 4}


def test_more_classes_than_points_maps_a_subset_spread_from_head_to_tail(tmp_path):
    counts = [40 - i // 10 for i in range(300)]  # 300 classes, 40 down to 11 images each
    features = make_features(counts)
    summary = tsne_figure(features, tmp_path / "many.png", max_points=100, size=(400, 300))
    assert summary["classes"] == 300 and summary["classes_shown"] == 100 // MIN_PER_CLASS
    assert summary["points"] == 100
    shown = shown_classes(torch.tensor(counts), 100)
    assert shown.numel() == 20 and shown.unique().numel() == 20
    assert shown[0] == 0 and shown[-1] == 299  # the most and the least frequent class are both in
    assert torch.equal(shown_classes(torch.tensor(counts), 10_000), torch.arange(300))
    rows = stratified_sample(features["train_labels"], 300, 100, torch.Generator().manual_seed(0), classes=shown)
    assert set(features["train_labels"][rows].tolist()) == set(shown.tolist())
