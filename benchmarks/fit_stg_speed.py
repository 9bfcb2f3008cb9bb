"""Time fit-stg with the default StgSettings on CIFAR-100-LT-sized features (goal: under 30 s on 2 CPU cores).

Usage: python benchmarks/fit_stg_speed.py [--epochs N] [--threads N] [--device cpu|cuda]
The features are random but class-structured: 10,847 × 64, 100 classes with the Cao IM100 counts.
"""
from __future__ import annotations

import argparse
import time

import torch

from ltstg.data.longtail import make_profile
from ltstg.recipe import StgSettings
from ltstg.stages.fit_stg import fit_stg
from ltstg.store import Artifact

NUM_CLASSES, DIM = 100, 64


def fake_features(seed: int = 0) -> Artifact:
    """Class centres plus per-class scaled noise, post-ReLU like pooled ResNet features."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.tensor(make_profile(500, NUM_CLASSES, 100, "exp"))  # (C,), 10,847 in all
    labels = torch.repeat_interleave(torch.arange(NUM_CLASSES), counts)  # (N,)
    centres = 2.0 * torch.randn(NUM_CLASSES, DIM, generator=generator)  # (C, D)
    spread = 0.5 + torch.rand(NUM_CLASSES, DIM, generator=generator)  # (C, D)
    train = (centres[labels] + spread[labels] * torch.randn(len(labels), DIM, generator=generator)).relu()  # (N, D)
    test_labels = torch.arange(NUM_CLASSES).repeat_interleave(100)  # (10000,)
    test = (centres[test_labels] + spread[test_labels] * torch.randn(len(test_labels), DIM, generator=generator)).relu()
    tensors = {
        "train_features": train,
        "train_labels": labels,
        "test_features": test,
        "test_labels": test_labels,
        "class_counts": counts,
        "classifier.weight": torch.zeros(NUM_CLASSES, DIM),
        "classifier.bias": torch.zeros(NUM_CLASSES),
    }
    info = {
        "class_names": [f"class{c}" for c in range(NUM_CLASSES)],
        "groups": ["many" if n > 100 else "few" if n < 20 else "medium" for n in counts.tolist()],
        "num_classes": NUM_CLASSES,
        "feature_dim": DIM,
    }
    return Artifact(id="f" * 64, meta={"kind": "features", "info": info}, tensors=tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="override StgSettings.epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.threads is not None:
        # the STG's ops are tiny: on a busy 2-core machine one thread avoids threads spinning against each other
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    settings = StgSettings() if args.epochs is None else StgSettings(epochs=args.epochs)
    features = fake_features()
    started = time.perf_counter()
    output = fit_stg(settings, features, seed=0, device=device, generator=torch.Generator(device=device).manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    info = output.info
    print(
        f"fit-stg on {device}, {torch.get_num_threads()} threads: {elapsed:.1f} s for {settings.epochs} epochs "
        f"({info['num_tokens']} head classes, {info['num_train']} train / {info['num_heldout']} held-out samples)"
    )
    print("  " + ", ".join(f"{name} {value:.4g}" for name, value in output.metrics.items()))


if __name__ == "__main__":
    main()
