"""CIFAR ResNets (He et al. 2016, as used by Cao et al.), registered in timm so every backbone is built one way."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ltstg.errors import LtstgError

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
WIDTHS = (16, 32, 64)


def _cfg() -> dict:
    """timm's pretrained config of a CIFAR net: no hosted weights, so `pretrained=True` needs a file (an export's
    `local-dir:` folder, or `pretrained_cfg_overlay=dict(file=...)`); an export records its own data's
    statistics, these are the usual CIFAR-10 ones."""
    return {"num_classes": 10, "input_size": (3, 32, 32), "pool_size": None, "crop_pct": 1.0, "interpolation": "bicubic",
            "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616), "first_conv": "conv1", "classifier": "fc"}


# read by timm's register_model below, so it must come first
default_cfgs = generate_default_cfgs({f"resnet{depth}_cifar": _cfg() for depth in CIFAR_DEPTHS})


def _init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs and linears, as in the reference CIFAR code of Cao et al."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(module.weight)


class BasicBlock(nn.Module):
    """Two 3x3 convs with an option-A shortcut, so the block adds no parameters when it downsamples."""

    def __init__(self, in_channels: int, channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.stride = stride
        self.extra_channels = channels - in_channels

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample by the stride and zero-pad the new channels equally on both sides (option A)."""
        if self.stride == 1 and self.extra_channels == 0:
            return x
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3-stage ResNet for 32x32 images with timm's head interface, so feature code needs no CIFAR branch."""

    def __init__(self, depth: int, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        if depth not in CIFAR_DEPTHS:
            raise LtstgError(f"CIFAR ResNet depth {depth} is not supported; use one of {list(CIFAR_DEPTHS)}.")
        blocks_per_stage = (depth - 2) // 6
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = WIDTHS[-1]
        self.drop_rate = drop_rate
        self.conv1 = nn.Conv2d(in_chans, WIDTHS[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        in_channels = WIDTHS[0]
        stages = []
        for index, channels in enumerate(WIDTHS):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(in_channels, channels, stride))
                in_channels = channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (0 gives pooled features), e.g. to re-train it on another class count."""
        self.num_classes = num_classes
        if num_classes > 0:
            reference = self.conv1.weight
            self.fc = nn.Linear(self.num_features, num_classes, device=reference.device, dtype=reference.dtype)
            _init_weights(self.fc)
        else:
            self.fc = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Unpooled (B, 64, H/4, W/4) map, as timm's forward_features returns."""
        x = F.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, then the classifier unless pre_logits asks for the (B, 64) features."""
        x = x.mean(dim=(2, 3))
        if self.drop_rate:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create_cifar_resnet(depth: int, pretrained: bool, **kwargs) -> CifarResNet:
    """Shared body of the entry points, through timm's builder (so `pretrained_cfg` and local weights work as for
    any timm model); pretrained weights only from a file, since none are hosted."""
    if pretrained and not _weights_file(kwargs.get("pretrained_cfg"), kwargs.get("pretrained_cfg_overlay")):
        raise LtstgError(
            f"resnet{depth}_cifar has no hosted weights; use pretrained=False and init_weights for a local file, or "
            "an exported folder (local-dir:DIR)."
        )
    return build_model_with_cfg(CifarResNet, f"resnet{depth}_cifar", pretrained, depth=depth, **kwargs)


def _weights_file(*configs: object) -> bool:
    """Whether a pretrained config (a dict or timm's PretrainedCfg) names weights: a local file, or a Hub repository
    (an export pushed there: `hf-hub:ORG/NAME`)."""
    for config in configs:
        for key in ("file", "hf_hub_id"):
            found = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
            if found:
                return True
    return False


@register_model
def resnet20_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet(20, pretrained, **kwargs)


@register_model
def resnet32_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet(32, pretrained, **kwargs)


@register_model
def resnet44_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet(44, pretrained, **kwargs)


@register_model
def resnet56_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet(56, pretrained, **kwargs)


@register_model
def resnet110_cifar(pretrained: bool = False, **kwargs) -> CifarResNet:
    return _create_cifar_resnet(110, pretrained, **kwargs)
