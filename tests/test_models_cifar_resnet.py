"""CIFAR ResNets: registry entries, the Cao et al. parameter counts, timm's head interface, bf16/channels_last."""
import pytest
import timm
import torch

from ltstg.errors import LtstgError
from ltstg.models.backbones import build_model

# Trainable parameters with a 10-way classifier, as reported for the He et al. CIFAR nets (0.27M ... 1.7M).
KNOWN_COUNTS = {
    "resnet20_cifar": 269_722,
    "resnet32_cifar": 464_154,
    "resnet44_cifar": 658_586,
    "resnet56_cifar": 853_018,
    "resnet110_cifar": 1_727_962,
}


@pytest.mark.parametrize("name", sorted(KNOWN_COUNTS))
def test_registry_builds_each_depth_with_known_parameter_count(name):
    model = timm.create_model(name, pretrained=False, num_classes=10)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - KNOWN_COUNTS[name]) <= 0.01 * KNOWN_COUNTS[name]
    assert count == KNOWN_COUNTS[name]
    assert model.num_features == 64
    assert model.num_classes == 10


def test_names_are_listed_by_timm():
    assert set(timm.list_models("*_cifar")) >= set(KNOWN_COUNTS)


def test_forward_shapes_and_pre_logits():
    model = timm.create_model("resnet20_cifar", num_classes=7).eval()
    images = torch.randn(3, 3, 32, 32)
    feature_map = model.forward_features(images)
    assert feature_map.shape == (3, 64, 8, 8)
    pooled = model.forward_head(feature_map, pre_logits=True)
    assert pooled.shape == (3, 64)
    torch.testing.assert_close(pooled, feature_map.mean(dim=(2, 3)))
    logits = model(images)
    assert logits.shape == (3, 7)
    torch.testing.assert_close(logits, model.get_classifier()(pooled))


def test_option_a_shortcut_pads_channels_with_zeros():
    model = timm.create_model("resnet20_cifar", num_classes=10)
    block = model.layer2[0]
    x = torch.randn(2, 16, 8, 8)
    shortcut = block.shortcut(x)
    assert shortcut.shape == (2, 32, 4, 4)
    torch.testing.assert_close(shortcut[:, 8:24], x[:, :, ::2, ::2])
    assert shortcut[:, :8].abs().sum() == 0 and shortcut[:, 24:].abs().sum() == 0


def test_kaiming_normal_init_of_convs_and_linear():
    model = timm.create_model("resnet56_cifar", num_classes=10)
    conv = torch.cat([block.conv2.weight.flatten() for block in model.layer3])  # fan_in 576
    assert abs(conv.std().item() - (2 / 576) ** 0.5) < 0.05 * (2 / 576) ** 0.5
    assert abs(model.fc.weight.std().item() - (2 / 64) ** 0.5) < 0.25 * (2 / 64) ** 0.5


def test_reset_classifier():
    model = timm.create_model("resnet20_cifar", num_classes=10).eval()
    images = torch.randn(2, 3, 32, 32)
    model.reset_classifier(5)
    assert model.num_classes == 5 and model.get_classifier().out_features == 5
    assert model(images).shape == (2, 5)
    model.reset_classifier(0)
    torch.testing.assert_close(model(images), model.forward_head(model.forward_features(images), pre_logits=True))


def test_channels_last_and_bf16_autocast_on_cpu():
    model = timm.create_model("resnet20_cifar", num_classes=10).eval()
    images = torch.randn(4, 3, 32, 32)
    reference = model(images)
    model = model.to(memory_format=torch.channels_last)
    images_cl = images.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(model(images_cl), reference, rtol=1e-4, atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(images_cl)
    assert logits.dtype == torch.bfloat16 and logits.shape == (4, 10)
    assert torch.isfinite(logits.float()).all()
    assert (logits.float() - reference).abs().max() < 0.1 * reference.abs().max() + 0.1


def test_pretrained_true_is_refused_without_a_weights_file():
    with pytest.raises(LtstgError, match="no hosted weights"):
        timm.create_model("resnet32_cifar", pretrained=True)


def test_timm_loads_a_cifar_net_saved_for_the_hub_from_its_folder(tmp_path):
    """The layout `ltstg export` writes (timm's save_for_hf): config.json and model.safetensors, read back by
    timm.create_model("local-dir:DIR") with its input config, as any timm model."""
    from timm.models import save_for_hf

    model = timm.create_model("resnet20_cifar", num_classes=7).eval()
    save_for_hf(model, tmp_path, model_config={"label_names": list("abcdefg")}, safe_serialization=True,
                data_config={"input_size": (3, 16, 16), "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.2, 0.2)})
    loaded = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded(images), model(images))
    assert loaded.pretrained_cfg["label_names"] == list("abcdefg")
    assert list(loaded.pretrained_cfg["input_size"]) == [3, 16, 16]


def test_unknown_name_lists_cifar_names():
    with pytest.raises(LtstgError) as error:
        build_model("resnet33_cifar", 10, seed=0)
    message = str(error.value)
    assert "resnet33_cifar" in message and "resnet32_cifar" in message and "resnet50" in message
