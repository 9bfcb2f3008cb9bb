"""Tiny generated data and a once-per-session tiny pretrain, so stage tests start from cached features."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from ltstg.recipe import load_recipe
from ltstg.stages import Context
from ltstg.store import Store

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"

TINY = """\
seed: 0
dataset:
  source: synthetic
  imbalance: 10
  size: 16
  val_per_class: 5
  synthetic: {num_classes: 4, train_per_class: 40, test_per_class: 10}
pretrain:
  model: resnet20_cifar
  epochs: 2
  batch_size: 16
  warmup_epochs: 1
  milestones: [1]
  eval_every: 1
stg:
  memory: 16
  epochs: 2
  batch_size: 16
retrain:
  epochs: 2
  batch_size: 16
"""

TINY_METHODS = """
methods:
  CE: {classifier: none}
  cRT: {classifier: crt}
  cRT+STG: {augment: {name: stg, lam: 1.5}}
"""


def pytest_configure(config):
    """Under pytest-xdist (`-n`), each worker's torch gets its share of the cores: two workers with two threads
    each on a 2-core machine spend their time spinning in OpenMP instead of computing."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.fixture
def tiny_recipe_path(tmp_path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """dataset -> backbone -> features on the tiny recipe, computed once for the whole session."""
    from ltstg.stages import steps

    root = tmp_path_factory.mktemp("tiny")
    path = root / "tiny.yaml"
    path.write_text(TINY)
    recipe = load_recipe(path)
    ctx = Context(store=Store(root / "store"))
    dataset = steps.dataset_step(ctx, recipe).artifact
    backbone = steps.pretrain_step(ctx, recipe, dataset).artifact
    features = steps.features_step(ctx, recipe, backbone, dataset).artifact
    return {"recipe": recipe, "ctx": ctx, "dataset": dataset, "backbone": backbone, "features": features}


@pytest.fixture(scope="session")
def cifar10_jpeg(tmp_path_factory) -> Path:
    """The JPEG CIFAR-10 copy in ../shared/data, unpacked once; tests using it skip without it."""
    if not SHARED_DATA.is_file():
        pytest.skip(f"real data not available: {SHARED_DATA}")
    import tarfile

    root = tmp_path_factory.mktemp("cifar10-jpeg")
    with tarfile.open(SHARED_DATA) as archive:
        archive.extractall(root, filter="data")
    children = [p for p in root.iterdir() if p.is_dir()]
    if (root / "train").is_dir():
        return root
    return children[0]


@pytest.fixture
def one_thread():
    """Tiny matrices gain nothing from threads; on a busy 2-core box OpenMP spinning makes them far slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
