"""build_model: seeded and side-effect free construction, local init weights with a new classifier size."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ltstg.errors import LtstgError
from ltstg.models.backbones import build_model, extract_pooled, feature_dim, load_weights


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_weights_different_seed_differs():
    first = build_model("resnet20_cifar", 10, seed=3)
    assert _same_weights(first, build_model("resnet20_cifar", 10, seed=3))
    assert not _same_weights(first, build_model("resnet20_cifar", 10, seed=4))


def test_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    build_model("resnet20_cifar", 10, seed=0)
    assert torch.equal(torch.get_rng_state(), before)


def _save(state, path):
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)


@pytest.mark.parametrize("file_name, wrap", [
    ("weights.safetensors", None), ("weights.pth", "state_dict"), ("weights.pt", "model"), ("raw.pth", None),
])
def test_init_weights_drop_classifier_of_other_size(tmp_path, file_name, wrap):
    source = build_model("resnet20_cifar", 10, seed=0)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / file_name
    _save({wrap: state} if wrap else state, path)
    model = build_model("resnet20_cifar", 365, seed=1)
    assert load_weights(model, path) == ["fc.bias", "fc.weight"]
    fresh = build_model("resnet20_cifar", 365, seed=1)
    loaded = model.state_dict()
    for key, value in loaded.items():
        expected = fresh.state_dict()[key] if key.startswith("fc.") else state[key]
        assert torch.equal(value, expected), key
    assert not torch.equal(loaded["conv1.weight"], fresh.state_dict()["conv1.weight"])


def test_init_weights_same_classifier_size_is_loaded(tmp_path):
    source = build_model("resnet20_cifar", 10, seed=0)
    path = tmp_path / "w.pth"
    torch.save(source.state_dict(), path)
    model = build_model("resnet20_cifar", 10, seed=5)
    assert load_weights(model, path) == []
    assert _same_weights(model, source)


def test_missing_corrupt_and_mismatched_weights_are_user_errors(tmp_path):
    with pytest.raises(LtstgError, match="does not exist"):
        load_weights(build_model("resnet20_cifar", 10, seed=0), tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(LtstgError, match="could not be read"):
        load_weights(build_model("resnet20_cifar", 10, seed=0), corrupt)
    corrupt_st = tmp_path / "corrupt.safetensors"
    corrupt_st.write_bytes(b"\x00" * 16)
    with pytest.raises(LtstgError, match="could not be read"):
        load_weights(build_model("resnet20_cifar", 10, seed=0), corrupt_st)
    other = tmp_path / "resnet32.pth"
    torch.save(build_model("resnet32_cifar", 10, seed=0).state_dict(), other)
    with pytest.raises(LtstgError, match="does not fit"):
        load_weights(build_model("resnet20_cifar", 10, seed=0), other)


def test_feature_dim_and_extract_pooled_for_cifar_and_timm_models():
    images = torch.randn(2, 3, 32, 32)
    for name, dim in (("resnet20_cifar", 64), ("resnet18", 512)):
        model = build_model(name, 3, seed=0).eval()
        assert feature_dim(model) == dim
        with torch.no_grad():
            pooled = extract_pooled(model, images)
            assert pooled.shape == (2, dim)
            torch.testing.assert_close(model.get_classifier()(pooled), model(images))


def _hub_cache(root, repo, files):
    """A huggingface_hub cache holding one snapshot of `repo` (ORG/NAME), as a download leaves it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, write in files.items():
        write(snapshot / name)
    return snapshot


def test_hub_weights_come_from_huggingface_hubs_cache_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from ltstg.errors import LtstgError
    from ltstg.models.backbones import load_weights, weights_file

    trained = build_model("resnet20_cifar", 4, seed=1)
    state = {key: value.contiguous() for key, value in trained.state_dict().items()}
    snapshot = _hub_cache(tmp_path, "acme/tiny", {"model.safetensors": lambda path: save_file(state, str(path))})
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert weights_file("hf-hub:acme/tiny") == snapshot / "model.safetensors"
    assert weights_file("relative/file.pth") == Path("relative/file.pth")  # a local path is taken as it is
    model = build_model("resnet20_cifar", 4, seed=2)
    assert load_weights(model, "hf-hub:acme/tiny") == []
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    with pytest.raises(LtstgError, match="HF_HUB_OFFLINE is set") as refused:
        weights_file("hf-hub:acme/absent")
    assert str(tmp_path) in str(refused.value)  # it names the cache it looked in
