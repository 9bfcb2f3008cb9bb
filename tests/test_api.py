"""The public API end to end on the synthetic data, through `import ltstg` only, and the README's example."""
import re
from pathlib import Path

import pytest
import torch

import ltstg

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory):
    """A store filled by ltstg.run on a tiny synthetic recipe, up to the STG."""
    root = tmp_path_factory.mktemp("api")
    recipe = root / "tiny.yaml"
    recipe.write_text(
        "dataset: {source: synthetic, imbalance: 10, size: 16, synthetic: {num_classes: 4, train_per_class: 40,"
        " test_per_class: 10}}\n"
        "pretrain: {model: resnet20_cifar, epochs: 1, batch_size: 16, warmup_epochs: 0}\n"
        "stg: {memory: 16, epochs: 1, batch_size: 16}\n"
    )
    assert ltstg.run(recipe, root / ".artifacts", until="fit-stg") == []  # no eval asked: no method rows
    return root


def test_public_api_end_to_end(filled_store):
    store = ltstg.open_store(filled_store / ".artifacts")
    features, stg = ltstg.load(store, "features"), ltstg.load(store, "stg")
    assert features.kind == "features" and ltstg.load(store, "stg", stg.id[:8]).id == stg.id
    augment = ltstg.stg_augmenter(stg, features, lam=1.5, t=0.5)
    assert isinstance(augment, ltstg.StgAugmenter)
    x, y = features["train_features"], features["train_labels"]
    out = augment.augment(x, y, generator=torch.Generator().manual_seed(0))
    head = torch.isin(y, stg["head_classes"])
    assert torch.equal(out[head], x[head]) and not torch.equal(out[~head], x[~head])
    relative = ltstg.stg_augmenter(stg, features, mu="relative").augment(x, y, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(relative[~head], out[~head])
    by_dataset = ltstg.stg_augmenter(stg, ltstg.load(store, "dataset"))  # counts are all eq3 needs
    assert torch.equal(by_dataset.augment(x, y, generator=torch.Generator().manual_seed(0)), out)
    model = ltstg.load_backbone(ltstg.load(store, "backbone"))
    images = torch.rand(3, 3, 16, 16)
    assert model(images).shape == (3, 4) and not model.training
    with pytest.raises(ltstg.LtstgError, match="mu 'relative' needs the training features"):
        ltstg.stg_augmenter(stg, ltstg.load(store, "dataset"), mu="relative")
    with pytest.raises(ltstg.LtstgError, match="not a backbone"):
        ltstg.load_backbone(features)
    with pytest.raises(ltstg.LtstgError, match="no store at"):
        ltstg.open_store(filled_store / "nowhere")


def test_the_readme_example_runs(filled_store, monkeypatch):
    text = README.read_text()
    section = text[text.index("## The STG as a library") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.chdir(filled_store)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 — our own README's example
    assert namespace["x_aug"].shape == namespace["x"].shape and namespace["pooled"].shape == (2, 64)


def test_run_sets_up_the_device_as_the_cli_does(tmp_path, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("seed: 0\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ltstg.LtstgError, match="torch sees no CUDA device"):
        ltstg.run(recipe, tmp_path / "store", device="cuda")
    with pytest.raises(ltstg.LtstgError, match="is not a device"):
        ltstg.run(recipe, tmp_path / "store", device="gpu")
    assert not (tmp_path / "store").exists()


def test_r20_11_bad_input_to_the_api_is_one_line_ltstg_error(filled_store, monkeypatch):
    store = ltstg.open_store(filled_store / ".artifacts")
    stg, features = ltstg.load(store, "stg"), ltstg.load(store, "features")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cases = [
        (lambda: ltstg.stg_augmenter(stg, features, mu="bogus"), "stg_augmenter: mu: Input should be"),
        (lambda: ltstg.stg_augmenter(stg, features, lam=-1), "stg_augmenter: lam: Input should be greater than"),
        (lambda: ltstg.stg_augmenter(stg, features, device="cuda"), "torch sees no CUDA device"),
        (lambda: ltstg.stg_augmenter(None, features), "stg must be a stg artifact"),
        (lambda: ltstg.stg_augmenter(stg, features).augment(
            torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long), generator=torch.Generator()),
         "augment takes features (B, D) and labels (B,)"),
        (lambda: ltstg.open_store(None), "open_store takes the store's folder as a path"),
        (lambda: ltstg.load(str(filled_store / ".artifacts"), "stg"), "load takes a store from ltstg.open_store"),
        (lambda: ltstg.run(None, filled_store / ".artifacts"), "run takes a recipe file"),
    ]
    for call, expected in cases:
        with pytest.raises(ltstg.LtstgError) as raised:
            call()
        assert expected in str(raised.value) and len(str(raised.value).splitlines()) == 1, str(raised.value)
