"""Wall-clock of stage 3 (cRT + STG, default settings) plus stage 4 on CIFAR-100-LT-sized features, on the CPU.

Features are synthetic (Gaussian classes, 10,847 x 64 train with the Cao et al. IM-100 counts, 10,000 x 64
test, 100 classes); the STG is randomly initialised (fit-stg's own builder, default width and depth), which
costs the same per step as a fitted one. Goal: under 30 s on a 2-core CPU.

Each step multiplies matrices of about 128 x 64 x 100, so OpenMP threads mostly wait on each other. With
libgomp's default busy-waiting, a box whose other processes keep both cores loaded made 850 such steps take
64 s instead of 2.4 s; passive waiting (set below unless the caller chose a policy) removes that.

    python benchmarks/retrain_speed.py [--threads N]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read once when torch loads libgomp, so before the import

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ltstg.data.longtail import make_profile  # noqa: E402
from ltstg.models.prototypes import class_means  # noqa: E402
from ltstg.recipe import EvalSettings, RetrainSettings, StgAugment, StgSettings  # noqa: E402
from ltstg.stages.evaluate import evaluate  # noqa: E402
from ltstg.stages.fit_stg import build_stg, select_head_classes  # noqa: E402
from ltstg.stages.retrain import retrain  # noqa: E402
from ltstg.store import Artifact  # noqa: E402

NUM_CLASSES, DIM, TEST_PER_CLASS, SEED = 100, 64, 100, 0


def synthetic_features() -> Artifact:
    """Gaussian classes with a head-biased nearest-mean stage-1 classifier, shaped like CIFAR-100-LT ResNet-32 features."""
    generator = torch.Generator().manual_seed(SEED)
    counts = torch.tensor(make_profile(500, NUM_CLASSES, 100, "exp"))  # (C,), 10,847 in all
    means = F.normalize(torch.randn(NUM_CLASSES, DIM, generator=generator), dim=1) * 4  # (C, D)

    def draw(per_class: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
        return means[labels] + torch.randn(labels.numel(), DIM, generator=generator), labels

    train, train_labels = draw(counts)
    test, test_labels = draw(torch.full((NUM_CLASSES,), TEST_PER_CLASS))
    tensors = {
        "train_features": train, "train_labels": train_labels, "test_features": test, "test_labels": test_labels,
        "class_counts": counts, "classifier.weight": means.clone(),
        "classifier.bias": -means.square().sum(dim=1) / 2 + torch.log(counts.float() / counts.max()),
    }
    info = {"class_names": [f"c{c}" for c in range(NUM_CLASSES)], "many_above": 100, "few_below": 20}
    return Artifact("f" * 64, {"kind": "features", "info": info}, tensors)


def random_stg(features: Artifact) -> Artifact:
    """An untrained STG in fit-stg's artifact layout: same shapes, so the same cost per step as a fitted one."""
    settings = StgSettings()
    head = select_head_classes(features["class_counts"], settings)  # (H,)
    model = build_stg(DIM, head.numel(), hidden=settings.hidden, depth=settings.depth, token_std=settings.token_std,
                      var_activation=settings.var_activation, seed=SEED)
    tensors = {f"stg.{name}": value.clone() for name, value in model.state_dict().items()}
    tensors["head_classes"] = head
    tensors["head_prototypes"] = class_means(features["train_features"], features["train_labels"], head)
    info = {"num_features": DIM, "num_tokens": head.numel(), "hidden": settings.hidden, "depth": settings.depth,
            "var_activation": settings.var_activation, "token_std": settings.token_std}
    return Artifact("5" * 64, {"kind": "stg", "info": info}, tensors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    features = synthetic_features()
    stg = random_stg(features)
    settings = RetrainSettings(augment=StgAugment())
    started = time.perf_counter()
    classifier_output = retrain(settings, features, stg, seed=SEED, device="cpu",
                                generator=torch.Generator().manual_seed(SEED))
    trained = time.perf_counter()
    classifier = Artifact("c" * 64, {"kind": "classifier", "info": classifier_output.info}, classifier_output.tensors)
    report = evaluate(classifier, features, EvalSettings())
    finished = time.perf_counter()
    steps = settings.epochs * -(-len(features["train_labels"]) // settings.batch_size)
    policy = os.environ["OMP_WAIT_POLICY"]
    print(f"threads {torch.get_num_threads()} (OMP_WAIT_POLICY={policy}), {steps} steps of batch "
          f"{settings.batch_size}, {stg['head_classes'].numel()} head classes")
    print(f"retrain (cRT+STG) {trained - started:.2f} s, evaluate {finished - trained:.2f} s, "
          f"total {finished - started:.2f} s (goal < 30 s)")
    print(f"top1 {report.metrics['top1']:.3f}, many {report.metrics['many']:.3f}, "
          f"medium {report.metrics['medium']:.3f}, few {report.metrics['few']:.3f}")


if __name__ == "__main__":
    main()
