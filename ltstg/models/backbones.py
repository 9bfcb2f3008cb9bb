"""Backbone construction: every model, CIFAR or ImageNet-size, comes from timm's registry by name.

Kept out of the package root so that code needing only the STG (the recipe's method registry) does not load timm."""
from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file

from ltstg.errors import LtstgError
from ltstg.models import cifar_resnet  # noqa: F401  (registers the *_cifar entry points in timm)

CIFAR_MODELS = tuple(f"resnet{depth}_cifar" for depth in cifar_resnet.CIFAR_DEPTHS)


def build_model(name: str, num_classes: int, *, seed: int) -> nn.Module:
    """Build on the CPU from a private seed, so the global RNG is untouched and every device starts alike."""
    if not timm.is_model(name):
        raise LtstgError(
            f"Unknown model '{name}'; use one of {', '.join(CIFAR_MODELS)} or any timm model name (e.g. resnet50)."
        )
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    return model


HUB = "hf-hub:"  # init_weights: hf-hub:ORG/NAME[@REVISION] takes the weights of a Hugging Face Hub model repository
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's Hub exports hold, in the order tried


def weights_file(spec: str | Path) -> Path:
    """The local file behind `init_weights`: the path itself, or a Hub repository's weights file fetched into (or,
    offline, found in) huggingface_hub's cache, whose sha256 then joins the backbone id as a local file's does."""
    spec = str(spec)
    if not spec.startswith(HUB):
        return Path(spec)
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    repo, _, revision = spec[len(HUB):].partition("@")
    missing = []
    for filename in HUB_FILES:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision or None))
        except (EntryNotFoundError, LocalEntryNotFoundError) as error:
            missing.append(f"{filename} ({type(error).__name__})")
        except (HfHubHTTPError, OSError, ValueError) as error:
            raise LtstgError(f"init_weights {spec}: {str(error).splitlines()[0][:200]}") from None
    where = f"the cache {constants.HF_HUB_CACHE}"
    if constants.HF_HUB_OFFLINE:
        raise LtstgError(f"init_weights {spec}: HF_HUB_OFFLINE is set and {where} holds none of {', '.join(HUB_FILES)}; "
                         "download it once online (or copy the cache here), or give a local file.")
    raise LtstgError(f"init_weights {spec}: no weights file in the repository or {where} ({'; '.join(missing)}).")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a raw state dict, or one wrapped under "state_dict" / "model" as training scripts save it."""
    if not path.is_file():
        raise LtstgError(f"Weights file {path} does not exist; pass a local .safetensors, .pth or .pt file.")
    if path.suffix not in (".safetensors", ".pth", ".pt"):
        raise LtstgError(f"Weights file {path} has an unknown suffix; use .safetensors, .pth or .pt.")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 — torch.load and safetensors raise many types for junk files
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:200]
        raise LtstgError(f"Weights file {path} could not be read as .safetensors/.pth weights ({reason}).") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise LtstgError(f"Weights file {path} does not hold a state dict of tensors.")
    return state


def check_weights_file(path: str | Path) -> None:
    """Read the file once before any training, so a junk weights file fails in seconds, not after an epoch."""
    _read_state_dict(weights_file(path))


def load_weights(model: nn.Module, path: str | Path) -> list[str]:
    """Load local weights, dropping a classifier of another class count so ImageNet weights can start a Places model.

    Returns the dropped keys (sorted), so the caller can say that the classifier starts fresh.
    """
    path = weights_file(path)
    state = _read_state_dict(path)
    own = model.state_dict()
    classifier = model.get_classifier()
    prefixes = tuple(f"{name}." for name, module in model.named_modules() if module is classifier and name)
    dropped = {
        key
        for key, value in state.items()
        if key.startswith(prefixes) and key in own and own[key].shape != value.shape
    }
    state = {key: value for key, value in state.items() if key not in dropped}
    mismatched = [key for key, value in state.items() if key in own and own[key].shape != value.shape]
    # weights saved before BN counted batches lack num_batches_tracked; the model's own zeros are fine
    missing = sorted(key for key in set(own) - set(state) - dropped if not key.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    if mismatched or missing or unexpected:
        problems = [f"{label} {len(keys)} keys (e.g. {keys[0]})"
                    for label, keys in (("mismatched", mismatched), ("missing", missing), ("unexpected", unexpected))
                    if keys]
        raise LtstgError(f"Weights file {path} does not fit this model: {', '.join(problems)}.")
    model.load_state_dict(state, strict=False)
    return sorted(dropped)


def feature_dim(model: nn.Module) -> int:
    """Size of the pooled features; timm's head_hidden_size where a head widens them (e.g. MobileNetV3)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def extract_pooled(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Pooled (B, D) features through timm's two-step head, one code path for every backbone."""
    return model.forward_head(model.forward_features(images), pre_logits=True)
