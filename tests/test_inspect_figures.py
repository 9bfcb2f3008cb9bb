"""Every picture is drawn from real (tiny) artifacts through the CLI, opens as a PNG, and is not blank."""
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ltstg.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")



def assert_picture(path, min_size=(300, 200)):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size[0] >= min_size[0] and image.size[1] >= min_size[1]
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10  # something is drawn, not a flat canvas
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tests.conftest import TINY, TINY_METHODS

    root = tmp_path_factory.mktemp("figures")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY + TINY_METHODS)
    store = root / "store"
    result = runner.invoke(app, ["--store", str(store), "run", str(recipe)])
    assert result.exit_code == 0, result.output
    return store


def invoke(store, *args):
    result = runner.invoke(app, ["--store", str(store), *args])
    assert result.exit_code == 0, result.output
    return result


def test_eval_pictures_per_class_norms_and_reliability(store, tmp_path):
    from ltstg.store import Store

    classifiers = [info.id[:12] for info in Store(store).list("classifier")]
    compare = [arg for ref in classifiers for arg in ("--compare", ref)]
    paths = {name: tmp_path / f"{name}.png" for name in ("per-class", "norms", "reliability")}
    result = invoke(store, "eval", *compare, "--plot", str(paths["per-class"]), "--plot-norms", str(paths["norms"]),
                    "--plot-reliability", str(paths["reliability"]))
    for path in paths.values():
        assert f"wrote {path}" in result.stderr.replace("\n", "")
        assert_picture(path)
    with Image.open(paths["reliability"]) as image:
        assert image.size[0] >= 3 * 300  # one panel per classifier


def test_confusion_curves_and_kl_heat_map(store, tmp_path):
    confusion, curves, kl = tmp_path / "confusion.png", tmp_path / "curves.png", tmp_path / "kl.png"
    invoke(store, "inspect", "confusion", "--out", str(confusion))
    from ltstg.store import Store

    stg = Store(store).list("stg")[0].id[:12]
    invoke(store, "inspect", "curves", "--stg", stg, "--out", str(curves))
    invoke(store, "inspect", "kl-divergence", "--samples", "3", "--plot", str(kl))
    for path in (confusion, curves, kl):
        assert_picture(path)


def test_pictures_refuse_classifiers_of_different_features(store, tmp_path, tiny_recipe_path):
    from ltstg.store import Store

    other = tmp_path / "other.yaml"
    other.write_text(tiny_recipe_path.read_text().replace("epochs: 2\n  batch_size: 16\n  warmup", "epochs: 1\n  batch_size: 16\n  warmup", 1))
    invoke(store, "run", str(other), "--until", "retrain")
    classifiers = Store(store).list("classifier")
    parents = {info.parents[0] for info in classifiers}
    assert len(parents) == 2
    first = next(i for i in classifiers if i.parents[0] == sorted(parents)[0])
    second = next(i for i in classifiers if i.parents[0] == sorted(parents)[1])
    result = runner.invoke(app, ["--store", str(store), "eval", "--compare", first.id[:12], "--compare",
                                 second.id[:12], "--plot", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "one features artifact" in result.stderr


def test_the_confusion_picture_of_many_classes_shows_groups_of_classes_by_count(tmp_path, monkeypatch):
    import torch
    from fakes import gaussian_features

    from ltstg.inspect import figures, plots
    from ltstg.store import Artifact

    counts = [40 - c // 5 for c in range(150)]  # 150 classes, by count from class 0 down
    features = gaussian_features(counts, dim=8)
    features.tensors.update(test_features=features["train_features"][::5], test_labels=features["train_labels"][::5])
    centres = torch.stack([features["train_features"][features["train_labels"] == c].mean(0) for c in range(150)])
    classifier = Artifact("1" * 64, {"kind": "classifier", "info": {}},
                          {"weight": centres, "bias": -centres.square().sum(1) / 2})
    drawn = {}
    real_plot = plots.plot_confusion

    def spy(matrix, counts, names, path, *, title=""):
        drawn.update(matrix=matrix, counts=counts, title=title)
        return real_plot(matrix, counts, names, path, title=title)

    monkeypatch.setattr(plots, "plot_confusion", spy)
    out = figures.confusion_figure("cRT", classifier, features, tmp_path / "confusion.png")
    assert_picture(out)
    cells = figures.CONFUSION_CELLS
    assert drawn["matrix"].shape == (cells, cells) and "groups of classes" in drawn["title"]
    assert drawn["matrix"].sum() == len(features["test_labels"])
    first = [c for c in range(150) if c * cells // 150 == 0]  # the largest classes: the first group
    assert drawn["counts"][0] == sum(counts[c] for c in first) and drawn["counts"][-1] == counts[-1]
