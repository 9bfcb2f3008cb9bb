"""`ltstg export` and `ltstg predict`: a model out of the store predicts the test split's image files exactly as
`ltstg eval` scored that classifier on the cached features, image for image."""
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ltstg.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = """methods:
  cRT: {classifier: crt}
  cRT (Kang): {classifier: crt, init: fresh, optimizer: sgd, lr: 0.05, sampling: class_aware, schedule_step: epoch,
               bn_shift: true}
  tau-norm: {classifier: tau-norm}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run whose classifiers (plain, BatchNorm-shifted, post-hoc) and reports are in the store."""
    from tests.conftest import TINY

    root = tmp_path_factory.mktemp("export")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY + METHODS)
    store = root / "store"
    result = runner.invoke(app, ["--store", str(store), "--json", "run", str(recipe)])
    assert result.exit_code == 0, result.output
    return {"root": root, "store": store, "rows": {row["method"]: row for row in json.loads(result.stdout)["rows"]}}


def _artifacts(store, report_id):
    from ltstg.store import Store

    opened = Store(store)
    report = opened.get(report_id, "report")
    classifier = opened.get(report.parents[0], "classifier")
    features = opened.get(classifier.parents[0], "features")
    return opened, report, classifier, features


def _eval_predictions(classifier, features):
    from ltstg.stages.evaluate import split_logits

    logits, labels = split_logits(classifier["weight"], classifier["bias"], features, "test")
    return logits.argmax(dim=1), labels


def _assert_eval_probabilities(rows, classifier, features):
    """Each row's top probability is eval's softmax(logits / T) of that image: the same features reached the
    same head (float32 from images through another batch composition: differences of order 1e-6)."""
    from ltstg.stages.evaluate import split_logits

    logits, _ = split_logits(classifier["weight"], classifier["bias"], features, "test")
    expected = (logits / float(classifier["temperature"])).softmax(dim=1).max(dim=1).values
    assert np.allclose([row["top"][0]["probability"] for row in rows], expected.numpy(), atol=1e-4)


def _test_images_as_files(store, features, folder):
    """The data set's test images as lossless PNG files, named in split order."""
    dataset = store.get(features.parents[1], "dataset")
    folder.mkdir(exist_ok=True)
    paths = []
    for index, image in enumerate(dataset["test_images"].numpy()):
        path = folder / f"{index:05d}.png"
        Image.fromarray(image).save(path)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("method", ["cRT", "cRT (Kang)", "tau-norm"])
def test_the_export_predicts_the_test_images_as_eval_scored_them(run, tmp_path, method):
    store, report, classifier, features = _artifacts(run["store"], run["rows"][method]["reports"][0])
    out = tmp_path / "model"
    exported = runner.invoke(app, ["--store", str(run["store"]), "--json", "export", classifier.id[:12], "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    written = json.loads(exported.stdout)
    assert written["lineage"]["classifier"] == classifier.id and written["bn_shift"] == (method == "cRT (Kang)")
    paths = _test_images_as_files(store, features, tmp_path / "test")
    predicted = runner.invoke(app, ["--json", "predict", str(out), str(tmp_path / "test"), "--top-k", "2"])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)["rows"]
    assert [row["path"] for row in rows] == paths  # a folder's images in sorted order
    expected, labels = _eval_predictions(classifier, features)
    assert [row["label"] for row in rows] == expected.tolist()  # image for image
    _assert_eval_probabilities(rows, classifier, features)
    top1 = float(np.mean([row["label"] == int(label) for row, label in zip(rows, labels)]))
    assert top1 == pytest.approx(report.metrics["top1"], abs=1e-9)
    assert all(len(row["top"]) == 2 and row["top"][0]["probability"] >= row["top"][1]["probability"] for row in rows)
    # the classifier artifact itself, folded on the fly, predicts the same
    direct = runner.invoke(app, ["--store", str(run["store"]), "--json", "predict", classifier.id[:12], *paths[:5]])
    assert direct.exit_code == 0, direct.output
    assert [row["label"] for row in json.loads(direct.stdout)["rows"]] == expected[:5].tolist()


def test_the_export_loads_in_plain_timm_with_the_temperature_and_class_names(run, tmp_path):
    import timm

    store, _, classifier, features = _artifacts(run["store"], run["rows"]["cRT"]["reports"][0])
    out = tmp_path / "model"
    assert runner.invoke(app, ["--store", str(run["store"]), "export", classifier.id, "--out", str(out)]).exit_code == 0
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    config = json.loads((out / "config.json").read_text())
    assert config["label_names"] == features.info["class_names"]
    assert config["ltstg"]["temperature"] == pytest.approx(float(classifier["temperature"]))
    assert list(config["pretrained_cfg"]["input_size"]) == [3, 16, 16]
    assert torch.equal(model.get_classifier().weight, classifier["weight"].float())
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_the_onnx_file_gives_the_same_logits(run, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    import timm

    _, _, classifier, _ = _artifacts(run["store"], run["rows"]["cRT (Kang)"]["reports"][0])
    out = tmp_path / "model"
    result = runner.invoke(app, ["--store", str(run["store"]), "export", classifier.id, "--out", str(out), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    images = torch.randn(5, 3, 16, 16)  # another batch size than the export's example
    expected = timm.create_model(f"local-dir:{out}", pretrained=True).eval()(images).detach()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    (logits,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    # float32 through two runtimes: kernels add in another order, a few ulps of logits of order 1-10
    assert np.allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)


def test_an_unreadable_image_is_a_line_and_a_skipped_row(run, tmp_path):
    store, _, classifier, features = _artifacts(run["store"], run["rows"]["cRT"]["reports"][0])
    paths = _test_images_as_files(store, features, tmp_path / "test")[:3]
    broken = tmp_path / "test" / "broken.png"
    broken.write_bytes(b"not an image")
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(["test/00000.png", "test/broken.png", "test/00002.png"]) + "\n")
    csv_file = tmp_path / "out.csv"
    result = runner.invoke(app, ["--store", str(run["store"]), "--json", "predict", classifier.id, str(listing),
                                 "--csv", str(csv_file)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [row["path"] for row in rows] == [paths[0], str(broken), paths[2]]
    assert "skipped" in rows[1] and "label" in rows[0] and "label" in rows[2]
    assert "broken.png" in result.stderr and "1 of 3 images could not be read" in result.stderr
    lines = csv_file.read_text().splitlines()
    assert len(lines) == 4 and lines[2].split(",")[1] != "" and lines[1].split(",")[1] == ""


def test_export_refuses_a_folder_that_holds_files_and_leaves_it_as_it_was(run, tmp_path):
    _, _, classifier, _ = _artifacts(run["store"], run["rows"]["cRT"]["reports"][0])
    out = tmp_path / "model"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    result = runner.invoke(app, ["--store", str(run["store"]), "export", classifier.id, "--out", str(out)])
    assert result.exit_code == 2 and "not an empty folder" in result.stderr
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]  # no staging folder left behind
    missing = runner.invoke(app, ["predict", str(tmp_path / "nowhere"), str(tmp_path)])
    assert missing.exit_code == 2


def test_predict_on_the_jpeg_copy_gives_evals_predictions(cifar10_jpeg, tmp_path):
    """Real JPEG files through make-dataset's decoder and predict's: a small image folder cut from the copy."""
    from tests.conftest import TINY

    root = tmp_path / "jpeg"
    for split, count in (("train", 40), ("test", 15)):
        for name in ("airplane", "cat", "ship"):
            (root / split / name).mkdir(parents=True)
            for source in sorted((cifar10_jpeg / split / name).iterdir())[:count]:
                shutil.copy(source, root / split / name / source.name)
    recipe = tmp_path / "jpeg.yaml"
    recipe.write_text(TINY.replace("  source: synthetic\n", f"  source: imagefolder\n  root: {root}\n")
                      .replace("  size: 16\n", "  size: 32\n").replace("  imbalance: 10\n", "  imbalance: 4\n")
                      + "methods:\n  cRT: {classifier: crt}\n")
    store = tmp_path / "store"
    result = runner.invoke(app, ["--store", str(store), "--json", "run", str(recipe)])
    assert result.exit_code == 0, result.output
    _, _, classifier, features = _artifacts(store, json.loads(result.stdout)["rows"][-1]["reports"][0])
    out = tmp_path / "model"
    assert runner.invoke(app, ["--store", str(store), "export", classifier.id, "--out", str(out)]).exit_code == 0
    predicted = runner.invoke(app, ["--json", "predict", str(out), str(root / "test")])
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)["rows"]
    expected, _ = _eval_predictions(classifier, features)  # test images in class order, files sorted: the folder's order
    assert len(rows) == 45 and [row["label"] for row in rows] == expected.tolist()
    _assert_eval_probabilities(rows, classifier, features)


def test_a_file_backed_data_set_is_predicted_through_the_same_resize_and_crop(tmp_path):
    """storage: paths (ImageNet-LT's way): images of any shape stay files, evaluated after a resize of the shorter
    side and a centre crop; predict reads them the same way."""
    from tests.conftest import TINY

    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for split, count in (("train", 24), ("test", 8)):
        for label, name in enumerate(("dark", "light", "red")):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 96, (20 + index % 5, 24, 3)) + 64 * label  # non-square, varying height
                pixels[..., 0] += 40 * (label == 2)
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(root / split / name / f"{index:03d}.png")
    recipe = tmp_path / "files.yaml"
    recipe.write_text(TINY.replace("  source: synthetic\n", f"  source: imagefolder\n  root: {root}\n  storage: paths\n")
                      .replace("  imbalance: 10\n", "  imbalance: 2\n") + "methods:\n  cRT: {classifier: crt}\n")
    store = tmp_path / "store"
    result = runner.invoke(app, ["--store", str(store), "--json", "run", str(recipe)])
    assert result.exit_code == 0, result.output
    _, _, classifier, features = _artifacts(store, json.loads(result.stdout)["rows"][-1]["reports"][0])
    out = tmp_path / "model"
    exported = runner.invoke(app, ["--store", str(store), "--json", "export", classifier.id, "--out", str(out)])
    assert exported.exit_code == 0 and json.loads(exported.stdout)["preprocess"] == "files"
    predicted = runner.invoke(app, ["--json", "predict", str(out), str(root / "test")])
    assert predicted.exit_code == 0, predicted.output
    expected, _ = _eval_predictions(classifier, features)
    rows = json.loads(predicted.stdout)["rows"]
    assert [row["label"] for row in rows] == expected.tolist()
    _assert_eval_probabilities(rows, classifier, features)


def test_export_takes_the_report_id_a_run_shows_and_refuses_other_kinds(run, tmp_path):
    _, report, classifier, features = _artifacts(run["store"], run["rows"]["cRT"]["reports"][0])
    out = tmp_path / "model"
    result = runner.invoke(app, ["--store", str(run["store"]), "--json", "export", report.id[:12], "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["lineage"]["classifier"] == classifier.id
    wrong = runner.invoke(app, ["--store", str(run["store"]), "export", features.id[:12], "--out", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "is a features artifact" in wrong.stderr and not (tmp_path / "x").exists()


def test_a_classifier_that_does_not_fit_the_backbones_head_is_refused_in_one_line(run):
    """A head of another shape (a classifier trained on other features' width) cannot be copied into the backbone:
    the export says which classifier and which head, instead of a copy_ shape error or a model that is not it."""
    from dataclasses import replace

    from ltstg.errors import LtstgError
    from ltstg.stages.export import Lineage, folded_model

    opened, _, classifier, _ = _artifacts(run["store"], run["rows"]["cRT"]["reports"][0])
    lineage = Lineage.of(opened, classifier)
    classes, dim = classifier["weight"].shape
    wider = replace(classifier, tensors={**classifier.tensors, "weight": torch.zeros(classes, dim + 1)})
    with pytest.raises(LtstgError, match=r"cannot be folded into backbone .*'s head \(\(\d+, \d+\)\)") as refused:
        folded_model(replace(lineage, classifier=wider))
    assert "\n" not in str(refused.value)
    folded_model(lineage)  # the classifier as trained folds


def test_an_export_the_file_system_refuses_is_one_line_and_leaves_nothing(run, tmp_path, monkeypatch):
    import errno

    import timm.models

    from ltstg.stages import export

    _, _, classifier, _ = _artifacts(run["store"], run["rows"]["cRT"]["reports"][0])

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(export.tempfile, "mkdtemp", refuse)
    result = runner.invoke(app, ["--store", str(run["store"]), "export", classifier.id, "--out", str(tmp_path / "a")])
    assert result.exit_code == 2 and "cannot write there (Permission denied)" in result.stderr
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(timm.models, "save_for_hf", full)
    result = runner.invoke(app, ["--store", str(run["store"]), "export", classifier.id, "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "could not be written (No space left on device)" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no half export, no staging folder


def test_predict_says_what_it_could_not_read_even_when_nothing_could_be(run, tmp_path):
    _, _, classifier, _ = _artifacts(run["store"], run["rows"]["cRT"]["reports"][0])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    result = runner.invoke(app, ["--store", str(run["store"]), "--json", "predict", classifier.id, str(broken)])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["rows"]
    assert row["path"] == str(broken) and row["skipped"] and "1 of 1 images could not be read" in result.stderr
    into = tmp_path / "new" / "folder" / "out.csv"  # folders that do not exist yet are made
    result = runner.invoke(app, ["--store", str(run["store"]), "predict", classifier.id, str(broken), "--csv", str(into)])
    assert result.exit_code == 0 and into.read_text().splitlines()[1].startswith(str(broken))


def test_the_onnx_export_keeps_stdout_for_the_json(run, tmp_path):
    pytest.importorskip("onnxscript")
    _, _, classifier, _ = _artifacts(run["store"], run["rows"]["cRT"]["reports"][0])
    result = runner.invoke(app, ["--store", str(run["store"]), "--json", "export", classifier.id, "--out",
                                 str(tmp_path / "m"), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert "model.onnx" in json.loads(result.stdout)["files"]  # stdout is the JSON alone
