"""The features stage's BatchNorm shift (MiSLAS's shift_bn for a frozen backbone) and how stage 3 finds it."""
import pytest
import torch
from torch import nn

from ltstg.data.inputs import TensorInputs
from ltstg.errors import LtstgError
from ltstg.recipe import load_recipe
from ltstg.stages import Context
from ltstg.stages.extract_features import shift_batchnorm
from ltstg.stages.pipeline import run_recipe
from ltstg.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")


class Tiny(nn.Module):
    """A BatchNorm on the raw pixels, then timm's two-step head: what extract_pooled calls."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)

    def forward_features(self, images):
        return self.norm(images)

    def forward_head(self, x, pre_logits=False):
        pooled = x.mean(dim=(2, 3))
        return pooled if pre_logits else self.fc(pooled)


def two_classes():
    """180 dark images of class 0 and 20 bright ones of class 1: instance batches are mostly dark."""
    g = torch.Generator().manual_seed(0)
    dark = torch.randint(0, 60, (180, 8, 8, 3), generator=g, dtype=torch.uint8)
    bright = torch.randint(190, 250, (20, 8, 8, 3), generator=g, dtype=torch.uint8)
    labels = torch.cat([torch.zeros(180), torch.ones(20)]).long()
    inputs = TensorInputs({"train": (torch.cat([dark, bright]), labels)}, torch.device("cpu"))
    return inputs, labels


def shifted(model, inputs, labels, seed=0):
    return shift_batchnorm(model, inputs, labels, batch_size=16, generator=torch.Generator().manual_seed(seed),
                           device=torch.device("cpu"), precision="fp32")


def test_the_shift_averages_class_balanced_augmented_batches_into_the_running_statistics_and_moves_no_weight():
    inputs, labels = two_classes()
    model = Tiny().eval()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    seen = []
    model.norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    record = shifted(model, inputs, labels)
    brightest = torch.cat([batch[:, 0].amax(dim=(1, 2)) for batch in seen])  # (200,) one per image seen
    bright = brightest > (120 / 255 - inputs.mean[0]) / inputs.std[0]  # a crop keeps some of its pixels (>= 190)
    assert len(brightest) == 200 and int(bright.sum()) == 100  # half of them from the 20-image class
    batch_means = torch.stack([batch.mean(dim=(0, 2, 3)) for batch in seen])  # (batches, 3)
    batch_vars = torch.stack([batch.var(dim=(0, 2, 3)) for batch in seen])  # unbiased, as BatchNorm keeps it
    assert torch.allclose(model.norm.running_mean, batch_means.mean(dim=0), atol=1e-5)  # cumulative: every batch alike
    assert torch.allclose(model.norm.running_var, batch_vars.mean(dim=0), atol=1e-4)
    assert not model.training and model.norm.momentum == 0.1  # back in eval mode, its momentum restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert record == {"batch_size": 16, "batches": 13, "images": 200, "layers": 1,
                      "sampling": "class_aware, 4 per class", "average": "cumulative"}
    again = Tiny().eval()
    shifted(again, inputs, labels)
    assert torch.equal(again.norm.running_mean, model.norm.running_mean)  # seeded


def test_a_backbone_without_batchnorm_cannot_shift():
    inputs, labels = two_classes()
    model = Tiny()
    model.norm = nn.Identity()
    with pytest.raises(LtstgError, match="no BatchNorm layer"):
        shifted(model, inputs, labels)


SHIFTING = """
methods:
  cRT: {classifier: crt}
  MiSLAS: {classifier: mislas, optimizer: sgd, lr: 0.1, wd: 2.0e-4, sampling: class_aware, schedule_step: epoch}
  MiSLAS (BN shift): {classifier: mislas, optimizer: sgd, lr: 0.1, wd: 2.0e-4, sampling: class_aware,
                      schedule_step: epoch, bn_shift: true}
"""


def test_a_bn_shift_row_trains_and_is_scored_on_shifted_features_and_the_others_on_the_plain_ones(
    tiny_recipe_path, tmp_path
):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + SHIFTING)
    store = Store(tmp_path / "store")
    runs, results = run_recipe(Context(store=store), load_recipe(tiny_recipe_path), seeds=[0])
    features = [r.artifact for r in results if r.artifact.kind == "features"]
    assert len(features) == 2
    plain, shift = features
    assert "bn_shift" not in plain.info and shift.info["bn_shift"]["batch_size"] == 16
    assert shift.parents == plain.parents  # the same backbone and data set
    assert not torch.equal(shift["train_features"], plain["train_features"])
    assert torch.equal(shift["classifier.weight"], plain["classifier.weight"])  # no weight moved
    on = {run.method: store.get(run.report.parents[0]).parents[0] for run in runs}
    assert on == {"cRT": plain.id, "MiSLAS": plain.id, "MiSLAS (BN shift)": shift.id}
    assert all(run.report.parents[1] == on[run.method] for run in runs)  # scored on what it trained on
    again, results_again = run_recipe(Context(store=store), load_recipe(tiny_recipe_path), seeds=[0])
    assert all(r.reused for r in results_again) and len(results_again) == len(results)


KANG_STG = """
methods:
  Kang cRT: &kang {classifier: crt, init: fresh, optimizer: sgd, lr: 0.05, sampling: class_aware, bn_shift: true}
  Kang cRT+STG: {<<: *kang, augment: {name: stg, lam: 0.5}, base: Kang cRT}
"""


def test_an_stg_row_that_shifts_batchnorm_has_its_stg_fitted_on_the_shifted_features(tiny_recipe_path, tmp_path):
    """Issue 33: the STG on the strongest stage 3 (Kang's cRT shifts BatchNorm), learning the features it is
    applied to; a run with no plain STG row fits no STG on the plain features, and every row gets the split."""
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + KANG_STG)
    store = Store(tmp_path / "store")
    runs, results = run_recipe(Context(store=store), load_recipe(tiny_recipe_path), seeds=[0])
    (stg,) = store.list("stg")
    shift = next(r.artifact for r in results if r.artifact.kind == "features" and "bn_shift" in r.artifact.info)
    assert store.get(stg.id).parents == [shift.id]
    classifier = {r.method: store.get(r.report.parents[0]) for r in runs}
    assert classifier["Kang cRT+STG"].parents == [shift.id, stg.id] and classifier["Kang cRT"].parents == [shift.id]
    assert {r.head_classes for r in runs} == {tuple(store.get(stg.id)["head_classes"].tolist())}
    assert len(results) == len({r.artifact.id for r in results})  # nothing made twice


def test_the_shift_flag_and_the_features_must_agree(tiny_run):
    from ltstg.recipe import RetrainSettings, StgAugment
    from ltstg.stages.retrain_checks import method_problems, shift_problems

    plain = tiny_run["features"]
    assert shift_problems(RetrainSettings(), plain) == []
    assert "are plain (no BatchNorm shift), but retrain.bn_shift is true at batch size 128" in \
        shift_problems(RetrainSettings(bn_shift=True), plain)[0]
    assert method_problems(RetrainSettings(bn_shift=True, augment=StgAugment())) == []  # its STG is fitted on them


def test_features_are_written_row_by_row_into_one_tensor_per_split_and_one_for_all_views(tiny_run, monkeypatch):
    """Neither a list of batches beside their concatenation nor a list of views beside their stack (issue 24:
    the views were held twice); no batch comes to the host by itself (a blocking sync per batch on a GPU)."""
    from ltstg.stages import extract_features as module

    monkeypatch.setattr(module, "BATCH", 3)  # many batches per split; the stage-1 classifier has 4 rows
    real, copies = torch.Tensor.cpu, []

    def counted(self, *args, **kwargs):
        copies.append(tuple(self.shape))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", counted)
    dataset = tiny_run["dataset"]
    out = module.extract_features(tiny_run["backbone"], dataset, feature_views=2, precision="fp32",
                                  device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    assert not [shape for shape in copies if shape and shape[0] <= 3]  # nothing of a batch's size
    assert torch.allclose(out.tensors["train_features"], tiny_run["features"]["train_features"], rtol=1e-4, atol=1e-4)
    views = out.tensors["train_views"]
    assert views.shape == (2, *out.tensors["train_features"].shape) and views._base is None  # one tensor of its own
    assert not torch.equal(views[0], views[1])  # each view its own crops


def test_float16_storage_halves_the_features_and_stage_3_reads_them_as_float32(tiny_run):
    from ltstg.data.features import training_features
    from ltstg.stages.extract_features import extract_features
    from ltstg.stages.retrain import pick_features

    args = dict(feature_views=1, precision="fp32", device=torch.device("cpu"))
    full = extract_features(tiny_run["backbone"], tiny_run["dataset"], generator=torch.Generator().manual_seed(0), **args)
    half = extract_features(tiny_run["backbone"], tiny_run["dataset"], generator=torch.Generator().manual_seed(0),
                            feature_storage="float16", **args)
    for name in ("train_features", "test_features", "val_features", "train_views"):
        assert half.tensors[name].dtype == torch.float16 and torch.equal(half.tensors[name], full.tensors[name].half())
    assert half.info["storage"] == "float16" and half.tensors["classifier.weight"].dtype == torch.float32
    from ltstg.store import Artifact

    inputs = training_features(Artifact("h" * 64, {"kind": "features"}, half.tensors), torch.device("cpu"))
    assert inputs.features.dtype == torch.float32 and inputs.views.dtype == torch.float16  # the views stay as stored
    batch = torch.arange(6)
    rows = pick_features(inputs, batch, torch.tensor([0, 1, 0, 1, 1, 0]))  # (6, D) drawn from the original or the view
    assert rows.dtype == torch.float32
    assert torch.equal(rows[1], full.tensors["train_views"][0, 1].half().float())
    assert torch.equal(rows[0], full.tensors["train_features"][0].half().float())


def test_the_shift_draws_from_a_generator_of_its_own_so_the_views_keep_their_crops(tiny_run):
    """The views' crops come from the stage generator; a shift drawing from it too would give the shifted
    features other crops than the plain ones, and a with/without comparison would change two things."""
    from ltstg.stages.extract_features import extract_features

    args = dict(feature_views=1, precision="fp32", device=torch.device("cpu"))
    plain_generator, shifted_generator = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    extract_features(tiny_run["backbone"], tiny_run["dataset"], generator=plain_generator, **args)
    shifted = extract_features(tiny_run["backbone"], tiny_run["dataset"], generator=shifted_generator,
                               bn_shift_batch=16, **args)
    assert shifted.info["bn_shift"]["batches"] > 0
    assert torch.equal(plain_generator.get_state(), shifted_generator.get_state())  # the same draws, no more


def test_a_shift_without_one_batch_is_an_error():
    inputs, labels = two_classes()
    with pytest.raises(LtstgError, match="no batch of at least 2"):
        shift_batchnorm(Tiny(), inputs, labels, batch_size=1, generator=torch.Generator().manual_seed(0),
                        device=torch.device("cpu"), precision="fp32")


def test_float16_storage_is_a_features_artifact_of_its_own_and_float32_keeps_the_ids_it_had(tiny_run):
    from ltstg.stages import steps

    recipe = tiny_run["recipe"]
    half = recipe.model_copy(update={"pretrain": recipe.pretrain.model_copy(update={"feature_storage": "float16"})})
    made = steps.features_step(tiny_run["ctx"], half, tiny_run["backbone"], tiny_run["dataset"]).artifact
    assert made.id != tiny_run["features"].id and made["train_features"].dtype == torch.float16
    assert made.settings["feature_storage"] == "float16" and "feature_storage" not in tiny_run["features"].settings
    again = tiny_run["ctx"].store.get(made.id, "features")  # read back from the file, memory-mapped
    assert torch.equal(again["train_features"], made["train_features"])
