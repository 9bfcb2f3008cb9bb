"""Stage 1: resume after a kill, determinism, bf16 on the CPU, feature shapes and the 2-process DDP run."""
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ltstg.recipe import load_recipe
from ltstg.stages import Context, steps
from ltstg.stages.pretrain import image_inputs, load_backbone
from ltstg.store import Store


def weights(artifact):
    return {k: v for k, v in artifact.tensors.items() if k.startswith("model.")}


def assert_same_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


class Recorder:
    """A `report` that keeps every call and, if asked, interrupts once the run enters a given epoch."""

    def __init__(self, interrupt_at_epoch=None):
        self.calls = []
        self.interrupt_at_epoch = interrupt_at_epoch

    def __call__(self, task, done, total, **metrics):
        self.calls.append((task, done, total, metrics))
        if self.interrupt_at_epoch is not None and metrics.get("epoch", 0) >= self.interrupt_at_epoch:
            raise KeyboardInterrupt


def test_interrupted_run_resumes_to_the_same_backbone(tmp_path, tiny_run):
    recipe = tiny_run["recipe"]
    store = Store(tmp_path / "store")
    dataset = steps.dataset_step(Context(store=store), recipe).artifact
    assert dataset.id == tiny_run["dataset"].id

    killer = Recorder(interrupt_at_epoch=2)  # dies in epoch 2 of 2, after epoch 1's checkpoint
    with pytest.raises(KeyboardInterrupt):
        steps.pretrain_step(Context(store=store, progress=killer), recipe, dataset)
    pending = tiny_run["backbone"].id
    assert not store.exists(pending)
    assert store.checkpoint_path(pending).is_file()
    assert int(store.load_checkpoint(pending)["epoch"]) == 0

    recorder = Recorder()
    resumed = steps.pretrain_step(Context(store=store, progress=recorder), recipe, dataset)
    steps_per_epoch = math.ceil(int(dataset["train_labels"].numel()) / recipe.pretrain.batch_size)
    first = [c for c in recorder.calls if c[0] == "pretrain"][0]
    assert first[1] > steps_per_epoch and first[3]["epoch"] == 2  # it continued, not restarted
    assert not resumed.reused and resumed.artifact.id == pending
    assert_same_weights(resumed.artifact, tiny_run["backbone"])
    assert torch.equal(resumed.artifact["history.loss"], tiny_run["backbone"]["history.loss"])
    assert not store.checkpoint_path(pending).exists()


def test_same_seed_same_backbone_other_seed_differs(tmp_path, tiny_run, tiny_recipe_path):
    recipe = tiny_run["recipe"]
    ctx = Context(store=Store(tmp_path / "store"))
    again = steps.pretrain_step(ctx, recipe, steps.dataset_step(ctx, recipe).artifact)
    assert not again.reused and again.artifact.id == tiny_run["backbone"].id
    assert_same_weights(again.artifact, tiny_run["backbone"])

    other_recipe = load_recipe(tiny_recipe_path, {"seed": 1})
    other = steps.pretrain_step(ctx, other_recipe, steps.dataset_step(ctx, other_recipe).artifact).artifact
    assert other.id != again.artifact.id
    assert not torch.equal(weights(other)["model.conv1.weight"], weights(again.artifact)["model.conv1.weight"])


def test_backbone_artifact_contents(tiny_run):
    backbone, recipe = tiny_run["backbone"], tiny_run["recipe"]
    info = backbone.info
    assert info["model"] == "resnet20_cifar" and info["num_classes"] == 4 and info["feature_dim"] == 64
    assert info["precision"] == "fp32" and info["world_size"] == 1
    assert backbone["history.loss"].shape == (recipe.pretrain.epochs,)
    assert torch.isfinite(backbone["history.loss"]).all()
    assert info["history"]["eval_epoch"] == [1, 2]
    assert backbone.parents == [tiny_run["dataset"].id]
    assert 0.0 <= backbone.metrics["test_top1"] <= 1.0 and backbone.metrics["img_s"] > 0
    model = load_backbone(backbone, torch.device("cpu"))
    assert not model.training and model.get_classifier().out_features == 4


def test_features_artifact_shapes(tiny_run):
    features, dataset, backbone = tiny_run["features"], tiny_run["dataset"], tiny_run["backbone"]
    n_train, n_test = len(dataset["train_labels"]), len(dataset["test_labels"])
    assert features["train_features"].shape == (n_train, 64) and features["train_features"].dtype == torch.float32
    assert features["test_features"].shape == (n_test, 64)
    assert torch.equal(features["train_labels"], dataset["train_labels"])
    assert torch.equal(features["test_labels"], dataset["test_labels"])
    assert features["classifier.weight"].shape == (4, 64) and features["classifier.bias"].shape == (4,)
    assert torch.equal(features["classifier.weight"], backbone["model.fc.weight"])
    assert torch.equal(features["class_counts"], dataset["class_counts"])
    assert "train_views" not in features.tensors
    assert features.parents == [backbone.id, dataset.id]
    assert (features["train_features"] >= 0).all()  # pooled after a ReLU
    # the cached features reproduce the stage-1 classifier's test accuracy
    assert abs(features.metrics["stage1_top1"] - backbone.metrics["test_top1"]) <= 1 / n_test + 1e-6


def test_stage1_is_scored_on_the_validation_split_class_balanced_so_its_settings_can_be_chosen_there(tiny_run):
    """The backbone records its class-balanced validation accuracy at every test epoch; the cached validation
    features give the same number, so stage-1 settings can be compared without looking at the test split."""
    features, backbone = tiny_run["features"], tiny_run["backbone"]
    history = backbone.info["history"]
    assert len(history["val_mean_class"]) == len(history["eval_epoch"]) == 2
    logits = features["val_features"] @ features["classifier.weight"].T + features["classifier.bias"]
    labels = features["val_labels"]
    right = (logits.argmax(dim=1) == labels).double()
    per_class = [float(right[labels == c].mean()) for c in labels.unique()]
    assert backbone.metrics["val_mean_class"] == history["val_mean_class"][-1]
    assert abs(backbone.metrics["val_mean_class"] - sum(per_class) / len(per_class)) <= 1e-6 + 1 / len(labels)


def test_feature_views_are_augmented_copies(tmp_path, tiny_run, tiny_recipe_path):
    recipe = load_recipe(tiny_recipe_path, {"pretrain.feature_views": 2})
    ctx = Context(store=Store(tmp_path / "store"))
    viewed = steps.features_step(ctx, recipe, tiny_run["backbone"], tiny_run["dataset"]).artifact
    plain = tiny_run["features"]
    assert viewed.id != plain.id
    views = viewed["train_views"]  # (2, N, 64)
    assert views.shape == (2, *plain["train_features"].shape) and torch.isfinite(views).all()
    assert torch.equal(viewed["train_features"], plain["train_features"])  # eval features are not augmented
    assert not torch.allclose(views[0], plain["train_features"])
    assert not torch.allclose(views[0], views[1])
    assert viewed.info["feature_views"] == 2


def test_bf16_cpu_run_is_finite(tmp_path, tiny_run, tiny_recipe_path):
    recipe = load_recipe(tiny_recipe_path, {"pretrain.precision": "bf16"})
    ctx = Context(store=Store(tmp_path / "store"))
    backbone = steps.pretrain_step(ctx, recipe, steps.dataset_step(ctx, recipe).artifact).artifact
    assert backbone.id != tiny_run["backbone"].id
    assert backbone.info["precision"] == "bf16"
    assert torch.isfinite(backbone["history.loss"]).all() and math.isfinite(backbone.metrics["train_loss"])
    assert all(torch.isfinite(v.float()).all() for v in weights(backbone).values())
    assert not torch.equal(weights(backbone)["model.fc.weight"], weights(tiny_run["backbone"])["model.fc.weight"])


def test_real_cifar10_jpeg_imagefolder_imb100_counts(tmp_path, cifar10_jpeg):
    recipe = load_recipe(None, {"dataset.source": "imagefolder", "dataset.root": str(cifar10_jpeg),
                                "dataset.imbalance": 100})
    dataset = steps.dataset_step(Context(store=Store(tmp_path / "store")), recipe).artifact
    # Cao et al.'s counts, but the first class, which keeps all its 5000 images, lends 100 to validation
    assert dataset["train_images"].shape == (12306, 32, 32, 3) and dataset["train_images"].dtype == torch.uint8
    assert dataset["class_counts"].tolist() == [4900, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert dataset["val_counts"].tolist() == [100] * 10 and dataset["val_images"].shape == (1000, 32, 32, 3)
    train_rows, val_rows = set(dataset["train_index"].tolist()), set(dataset["val_index"].tolist())
    assert not train_rows & val_rows  # rows of the source's train/ folder; the test/ folder is apart
    assert torch.bincount(dataset["train_labels"], minlength=10).tolist() == dataset["class_counts"].tolist()
    assert dataset["test_images"].shape[0] == 10000 and len(dataset["test_labels"]) == 10000
    assert torch.bincount(dataset["test_labels"], minlength=10).tolist() == [1000] * 10


def test_image_inputs_channels_last_only_changes_the_layout(tiny_run):
    dataset, cpu = tiny_run["dataset"], torch.device("cpu")
    batches = {}
    for channels_last in (False, True):
        inputs = image_inputs(dataset, cpu, channels_last=channels_last)
        train = next(inputs.train_batches(16, torch.Generator().manual_seed(0)))
        test = next(inputs.eval_batches("test", 16))
        batches[channels_last] = (train, test)
    for (plain, plain_labels), (last, last_labels) in zip(batches[False], batches[True]):
        assert plain.is_contiguous() and last.is_contiguous(memory_format=torch.channels_last)
        assert plain.shape == last.shape == (16, 3, 16, 16)
        assert torch.equal(plain, last) and torch.equal(plain_labels, last_labels)


def test_backbone_id_ignores_settings_that_change_no_weight(tiny_run, tiny_recipe_path):
    recipe = load_recipe(tiny_recipe_path, {"pretrain.feature_views": 2, "pretrain.eval_every": 7})
    again = steps.pretrain_step(tiny_run["ctx"], recipe, tiny_run["dataset"])
    assert again.reused and again.artifact.id == tiny_run["backbone"].id


def test_init_weights_of_another_class_count_say_the_classifier_starts_fresh(tmp_path, tiny_run, tiny_recipe_path):
    from safetensors.torch import save_file

    from ltstg.models.backbones import build_model

    path = tmp_path / "ten_classes.safetensors"
    save_file({k: v.contiguous() for k, v in build_model("resnet20_cifar", 10, seed=0).state_dict().items()}, str(path))
    said = []
    recipe = load_recipe(tiny_recipe_path, {"pretrain.init_weights": str(path), "pretrain.epochs": 1})
    ctx = Context(store=Store(tmp_path / "store"), note=said.append)
    backbone = steps.pretrain_step(ctx, recipe, steps.dataset_step(ctx, recipe).artifact).artifact
    expected = "init_weights: dropped fc.bias, fc.weight (another class count); the 4-class classifier starts from random weights"
    assert backbone.meta["notes"] == [expected] and f"backbone {backbone.id[:12]}: {expected}" in said


def test_a_batch_size_that_gives_no_step_is_a_user_error(tmp_path, tiny_run, monkeypatch):
    from ltstg.data.inputs import TensorInputs
    from ltstg.errors import LtstgError

    monkeypatch.setattr(TensorInputs, "train_steps", lambda self, batch_size, world_size=1: 0)
    store = Store(tmp_path / "store")
    with pytest.raises(LtstgError, match=r"gives no training step over \d+ images on 1 process"):
        steps.pretrain_step(Context(store=store), tiny_run["recipe"], tiny_run["dataset"])
    assert not any(p.is_file() for p in (tmp_path / "store").rglob("*.safetensors"))


def test_the_loss_is_read_off_the_device_only_when_someone_is_shown_it(tiny_run, monkeypatch):
    """`float(loss)` is a host sync on a GPU: a run with nothing to show (silent progress, every rank but the
    first) reads no per-step loss (issue 23, row 3)."""
    from ltstg.progress import silent
    from ltstg.stages.pretrain import pretrain

    recipe, dataset = tiny_run["recipe"], tiny_run["dataset"]
    real, reads = torch.Tensor.__float__, []

    def counted(self):
        reads.append(self.numel())
        return real(self)

    monkeypatch.setattr(torch.Tensor, "__float__", counted)

    def reads_with(progress):
        reads.clear()
        out = pretrain(recipe.pretrain, dataset, seed=0, device=torch.device("cpu"),
                       generator=torch.Generator().manual_seed(0), progress=progress)
        return len(reads), out

    recorder = Recorder()
    shown, first = reads_with(recorder)
    quiet, second = reads_with(silent)
    losses = [call for call in recorder.calls if call[0] == "pretrain"]
    assert losses and quiet == shown - len(losses)  # one read per progress line, none without one
    assert_same_weights(first, second)


def test_torch_compile_is_asked_for_static_shapes(tiny_run, monkeypatch):
    """A dynamic-shape graph after the first partial batch would slow every later full batch (issue 23, row 2)."""
    from ltstg.stages.pretrain import pretrain

    asked = []

    def fake_compile(model, **kwargs):
        asked.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    settings = tiny_run["recipe"].pretrain.model_copy(update={"compile": True, "epochs": 1})
    pretrain(settings, tiny_run["dataset"], seed=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert asked == [{"dynamic": False}]


def test_the_number_of_processes_defines_the_backbone_id(tiny_run, monkeypatch):
    """Without SyncBatchNorm each process normalises its own shard, so 1 and 8 processes train other weights
    from one global batch: they must not share an id, nor a checkpoint (issue 23, row 7). One process keeps
    the id it always had."""
    import dataclasses

    defined = []
    monkeypatch.setattr(steps, "run_stage", lambda ctx, kind, defining, *args, **kwargs: defined.append(defining))
    ctx = tiny_run["ctx"]
    for world_size in (1, 2, 8):
        options = {**ctx.run_options, "world_size": world_size}
        steps.pretrain_step(dataclasses.replace(ctx, run_options=options), tiny_run["recipe"], tiny_run["dataset"])
    one, two, eight = (steps.stage_id("backbone", d, 0, [tiny_run["dataset"]]) for d in defined)
    assert one == tiny_run["backbone"].id and len({one, two, eight}) == 3
    assert "world_size" not in defined[0] and defined[2]["world_size"] == 8



def test_run_under_torchrun_trains_stage1_on_both_ranks_and_the_rest_once(tmp_path, tiny_recipe_path):
    """`torchrun … -m ltstg run` (issue 23, row 4): the data set is made once, stage 1 is one DDP run, and the
    features, the STG and stage 3 are made once, by the first rank, which alone prints the table."""
    from tests.conftest import TINY_METHODS

    (tmp_path / "tiny.yaml").write_text(tiny_recipe_path.read_text() + TINY_METHODS)
    store = tmp_path / "store"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    run = subprocess.run([*torchrun, "-m", "ltstg", "--store", str(store), "--device", "cpu", "--json",
                          "run", "tiny.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-4000:]
    printed = json.loads(run.stdout)  # one JSON document: only the first rank printed
    assert [row["method"] for row in printed["rows"]] == ["CE", "cRT", "cRT+STG"]
    s = Store(store)
    assert [len(s.list(kind)) for kind in ("dataset", "backbone", "features", "stg", "classifier", "report")] == \
        [1, 1, 1, 1, 3, 3]
    assert s.list("backbone")[0].meta["info"]["world_size"] == 2
    forced = subprocess.run([*torchrun, "-m", "ltstg", "--store", str(store), "--device", "cpu", "--json",
                             "run", "tiny.yaml", "--force", "--until", "pretrain"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=400)
    assert forced.returncode == 0, forced.stderr[-4000:]  # the first rank does not redo stage 1 alone (a hang)
    remade = {a["kind"]: a["id"] for a in json.loads(forced.stdout)["artifacts"]}
    assert remade["backbone"] == s.list("backbone")[0].id and len(Store(store).list("backbone")) == 1


def test_a_silent_stage1_epoch_reads_the_device_once_at_its_end(tiny_run, monkeypatch):
    """Per-step host syncs stall a GPU: with nothing shown, an epoch reads its loss once, after the last step
    (issue 23, rows 3 and 10), counted on the CPU from the ops that would wait for a GPU."""
    import ltstg.stages.pretrain as pretrain_module
    from tests.host_syncs import HostSyncs

    real, per_epoch = pretrain_module.train_one_epoch, []

    def counted(*args, **kwargs):
        with HostSyncs() as syncs:
            result = real(*args, **kwargs)
        per_epoch.append(syncs.seen)
        return result

    monkeypatch.setattr(pretrain_module, "train_one_epoch", counted)
    recipe, dataset = tiny_run["recipe"], tiny_run["dataset"]
    pretrain_module.pretrain(recipe.pretrain, dataset, seed=0, device=torch.device("cpu"),
                             generator=torch.Generator().manual_seed(0))
    assert per_epoch and all(seen == ["aten._local_scalar_dense.default"] for seen in per_epoch), per_epoch


def test_the_prepared_gpu_check_runs_on_the_cpu(tmp_path):
    """`benchmarks/gpu_check.py` is the one command for a GPU (issue 23); its --cpu toy run keeps it working
    here: the CLI, a stage 1 stopped by --time-limit and resumed, 2-process DDP (`torchrun … pretrain`: one
    backbone and its features, printed by the first rank alone, no checkpoint left), the loop-against-bare ratio,
    the loader."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--cpu", "--json", str(tmp_path / "figures.json")],
                          capture_output=True, text=True, timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("ok")] == \
        ["ok  data set", "ok  stage 1", "ok  DDP", "ok  throughput", "ok  loader"]
    figures = json.loads((tmp_path / "figures.json").read_text())
    assert figures["loop_img_s"] > 0 and figures["bare_img_s"] > 0 and figures["loader_img_s"] > 0


@pytest.mark.parametrize("storage", ["tensors", "paths"])
def test_a_checkpoint_from_another_process_count_is_refused_with_the_command_that_resumes_it(tiny_run, tmp_path,
                                                                                              monkeypatch, storage):
    """The process count defines the weights (issue 23, row 7): a run on N processes beside a checkpoint of the
    same settings from M processes would start over silently; it stops and says how to resume instead, for
    image files too (their ids carry more than the settings)."""
    from ltstg.errors import LtstgError
    from ltstg.store import Artifact

    recipe, dataset = tiny_run["recipe"], tiny_run["dataset"]
    dataset = Artifact(dataset.id, {**dataset.meta, "info": {**dataset.info, "storage": storage}}, dataset.tensors)
    monkeypatch.setattr(steps, "run_stage", lambda ctx, kind, defining, parents, call, **kw:
                        steps.stage_id(kind, defining, kw["seed"], parents))  # the id the stage would compute
    store = Store(tmp_path / "store")
    alone, two = Context(store=store), Context(store=store, run_options={"world_size": 2})
    for saved_by, run_by, fix in ((two, alone, "under torchrun with 2 processes in all"), (alone, two, "without torchrun")):
        pending = steps.pretrain_step(saved_by, recipe, dataset)
        store.save_checkpoint(pending, {"epoch": 0, "_device": "cpu"})
        with pytest.raises(LtstgError, match=f"a run on {1 if saved_by is alone else 2} process.*{fix} to resume"):
            steps.pretrain_step(run_by, recipe, dataset)
        assert steps.pretrain_step(saved_by, recipe, dataset) == pending  # its own count resumes it
        forced = steps.pretrain_step(dataclasses.replace(run_by, force=True), recipe, dataset)
        assert forced != pending
        store.clear_checkpoint(pending)
