import math

import pytest
import torch
from torch import nn

from ltstg.augment.dropout import DropoutAugmenter
from ltstg.augment.isda import IsdaAugmenter
from ltstg.augment.noise import NoiseAugmenter
from ltstg.augment.none import NoAugmenter
from ltstg.augment.stg import StgAugmenter
from ltstg.models.heads import LinearClassifier
from ltstg.data.features import TrainingFeatures
from ltstg.errors import LtstgError
from ltstg.methods import augmenters, classifiers, get_augmenter
from ltstg.metrics import per_class_accuracy
from ltstg.models.prototypes import class_means, nearest_prototype
from ltstg.recipe import (
    DropoutAugment,
    EvalSettings,
    IsdaAugment,
    NoAugment,
    NoiseAugment,
    RetrainSettings,
    StgAugment,
)
from ltstg.stages import Checkpoint
from ltstg.stages.evaluate import score
from ltstg.stages.fit_stg import build_stg
from ltstg.stages.retrain import method_label, retrain
from ltstg.store import Artifact, Store

COUNTS = [200, 120, 60, 30, 12, 6]  # many: 0, 1 (>100); medium: 2, 3; few: 4, 5 (<20)
DIM = 16
HEAD = [0, 1]
FAST = dict(epochs=3, batch_size=32, lr=1e-2)
AUGMENTERS = {"none": NoAugmenter, "stg": StgAugmenter, "isda": IsdaAugmenter, "noise": NoiseAugmenter,
              "dropout": DropoutAugmenter}  # the classes whose augment the tests below watch


pytestmark = pytest.mark.usefixtures("one_thread")


def make_features(*, seed=0, views=0, constant_class=None, dim=DIM):
    """Gaussian classes on a sphere; the stage-1 classifier is nearest-mean plus a large log-count bias (head-biased)."""
    g = torch.Generator().manual_seed(seed)
    num_classes = len(COUNTS)
    means = nn.functional.normalize(torch.randn(num_classes, dim, generator=g), dim=1) * 3  # (C, D)

    def draw(counts):
        labels = torch.arange(num_classes).repeat_interleave(torch.tensor(counts))
        return means[labels] + torch.randn(labels.numel(), dim, generator=g), labels

    train, train_labels = draw(COUNTS)
    test, test_labels = draw([40] * num_classes)
    val, val_labels = draw([20] * num_classes)
    if constant_class is not None:
        train[train_labels == constant_class] = means[constant_class]
    counts = torch.tensor(COUNTS)
    tensors = {
        "train_features": train,
        "train_labels": train_labels,
        "test_features": test,
        "test_labels": test_labels,
        "val_features": val,
        "val_labels": val_labels,
        "class_counts": counts,
        "classifier.weight": means.clone(),
        "classifier.bias": -means.square().sum(dim=1) / 2 + 3 * torch.log(counts.float() / COUNTS[0]),
    }
    if views:
        tensors["train_views"] = train + 0.1 * torch.randn(views, *train.shape, generator=g)
    info = {"class_names": [f"c{c}" for c in range(num_classes)], "many_above": 100, "few_below": 20}
    return Artifact("f" * 64, {"kind": "features", "info": info}, tensors)


def make_stg(features, *, seed=0, dim=DIM):
    """A randomly initialised STG packaged as fit-stg stores it (the real load_stg rebuilds it)."""
    info = {"num_features": dim, "num_tokens": len(HEAD), "hidden": 32, "depth": 2,
            "var_activation": "softplus", "token_std": 0.02}
    model = build_stg(dim, len(HEAD), hidden=32, depth=2, token_std=0.02, var_activation="softplus", seed=seed)
    tensors = {f"stg.{k}": v.clone() for k, v in model.state_dict().items()}
    tensors["head_classes"] = torch.tensor(HEAD)
    tensors["head_prototypes"] = class_means(features["train_features"], features["train_labels"], torch.tensor(HEAD))
    return Artifact("5" * 64, {"kind": "stg", "info": info}, tensors)


def run(settings, features, stg=None, *, seed=0, checkpoint=None):
    generator = torch.Generator().manual_seed(seed)
    return retrain(settings, features, stg, seed=seed, device="cpu", generator=generator, checkpoint=checkpoint)


def test_crt_beats_biased_stage1_on_few_classes():
    features = make_features()
    stage1, _ = score(features["classifier.weight"], features["classifier.bias"], features, EvalSettings())
    out = run(RetrainSettings(epochs=10, batch_size=32, lr=1e-2), features)
    crt, _ = score(out.tensors["weight"], out.tensors["bias"], features, EvalSettings())
    assert stage1["many"] > stage1["few"] + 0.3  # the hand-made stage-1 classifier really is head-biased
    assert crt["few"] > stage1["few"] + 0.2
    on_val, _ = score(out.tensors["weight"], out.tensors["bias"], features, EvalSettings(), split="val")
    assert out.metrics["val_mean_class"] == pytest.approx(on_val["mean_class"])
    assert not [key for key in out.metrics if key in crt]  # retrain reports nothing measured on the test split
    curve = out.tensors["curve.loss"]
    assert curve.shape == (10,) and curve[-1] < curve[0]
    assert out.info == {"classifier": "crt", "augment": "none", "method": "cRT", "init": "fresh", "feature_dim": DIM, "num_classes": 6}
    assert out.kind == "classifier" and out.key_metric == "val_mean_class"


def test_method_labels_and_registry_match():
    from typing import get_args

    from ltstg.augment.stg import MU_MODES
    from ltstg.training import SMOOTH_SHAPES

    assert set(AUGMENTERS) <= set(augmenters())
    assert set(MU_MODES) == set(get_args(StgAugment.model_fields["mu"].annotation))
    assert set(SMOOTH_SHAPES) == set(get_args(RetrainSettings.model_fields["smooth_shape"].annotation))
    assert set(classifiers()) == set(get_args(RetrainSettings.model_fields["classifier"].annotation))
    assert method_label(RetrainSettings(augment=StgAugment())) == "cRT+STG"
    assert method_label(RetrainSettings()) == "cRT"
    assert method_label(RetrainSettings(classifier="lws", augment=IsdaAugment())) == "LWS+ISDA"
    assert method_label(RetrainSettings(classifier="tau-norm")) == "τ-norm"
    assert method_label(RetrainSettings(classifier="none")) == "CE (stage 1)"


def _record(monkeypatch, augmenter_class):
    """Wrap the augmenter's augment and the classifier's forward, recording what flows between them."""
    calls, seen = [], []
    original = augmenter_class.augment

    def augment(self, features, labels, *, generator):
        out = original(self, features, labels, generator=generator)
        calls.append((features.clone(), labels.clone(), out.clone()))
        return out

    def forward(self, features):
        seen.append(features.detach().clone())
        return nn.Linear.forward(self, features)

    monkeypatch.setattr(augmenter_class, "augment", augment)
    monkeypatch.setattr(LinearClassifier, "forward", forward)
    return calls, seen


def _check_none(before, labels, after, features):
    assert torch.equal(after, before)


def _check_stg(before, labels, after, features):
    head = (labels == 0) | (labels == 1)
    assert torch.equal(after[head], before[head])  # head features reach the classifier untouched
    tail_kept = after[~head] == before[~head]
    assert tail_kept.any() and (~tail_kept).any()  # t = 0.5: about half the tail dimensions move


def _check_isda(before, labels, after, features):
    constant = labels == 5  # class 5 has zero variance, so ISDA must leave it alone
    assert torch.equal(after[constant], before[constant])
    assert (after[~constant] != before[~constant]).all()


def _check_noise(before, labels, after, features):
    assert (after != before).all()
    assert (after - before).std().item() == pytest.approx(0.5, rel=0.15)


def _check_dropout(before, labels, after, features):
    dropped = after == 0
    assert torch.allclose(after[~dropped], before[~dropped] / 0.8)
    assert dropped.float().mean().item() == pytest.approx(0.2, abs=0.06)


@pytest.mark.parametrize(
    "augment, check",
    [
        (NoAugment(), _check_none),
        (StgAugment(lam=1.0, t=0.5), _check_stg),
        (IsdaAugment(lam=0.5), _check_isda),
        (NoiseAugment(std=0.5), _check_noise),
        (DropoutAugment(p=0.2), _check_dropout),
    ],
)
def test_every_augmenter_feeds_the_classifier(monkeypatch, augment, check):
    features = make_features(constant_class=5)
    stg = make_stg(features)
    calls, seen = _record(monkeypatch, AUGMENTERS[augment.name])
    out = run(RetrainSettings(augment=augment, epochs=2, batch_size=64), features, stg)
    steps = 2 * math.ceil(len(features["train_labels"]) / 64)
    assert len(calls) == len(seen) == steps
    train = features["train_features"]
    for (before, labels, after), classified in zip(calls, seen):
        assert torch.equal(classified, after)  # the classifier sees exactly the augmented batch
        # the augmenter gets real training rows with their own labels
        match = (before.unsqueeze(1) == train.unsqueeze(0)).all(dim=2)  # (B, N)
        assert match.any(dim=1).all()
        assert torch.equal(features["train_labels"][match.float().argmax(dim=1)], labels)
    before = torch.cat([c[0] for c in calls])
    labels = torch.cat([c[1] for c in calls])
    after = torch.cat([c[2] for c in calls])
    check(before, labels, after, features)
    assert out.info["augment"] == augment.name
    assert ("borrowed_head" in out.tensors) == (augment.name == "stg")


def test_stg_reports_borrowed_head_classes():
    features = make_features()
    stg = make_stg(features)
    out = run(RetrainSettings(augment=StgAugment(), **FAST), features, stg)
    labels = features["train_labels"]
    head_rows = labels <= 1
    borrowed, cosine = out.tensors["borrowed_head"], out.tensors["borrowed_cosine"]
    assert (borrowed[head_rows] == -1).all() and cosine[head_rows].isnan().all()
    index, best = nearest_prototype(features["train_features"][~head_rows], stg["head_prototypes"])
    assert torch.equal(borrowed[~head_rows], torch.tensor(HEAD)[index])
    assert torch.allclose(cosine[~head_rows], best)
    assert out.info["method"] == "cRT+STG"


def test_views_are_drawn_alongside_the_originals(monkeypatch):
    features = make_features(views=2)
    calls, _ = _record(monkeypatch, AUGMENTERS["none"])
    run(RetrainSettings(**FAST), features)
    rows = torch.cat([c[0] for c in calls])  # (draws, D)
    sources = torch.cat([features["train_features"].unsqueeze(0), features["train_views"]])  # (3, N, D)
    hits = [(rows.unsqueeze(1) == copy.unsqueeze(0)).all(dim=2).any(dim=1) for copy in sources]
    assert (hits[0] | hits[1] | hits[2]).all()
    for hit in hits:  # each copy supplies about a third of the draws
        assert hit.float().mean().item() == pytest.approx(1 / 3, abs=0.08)


def test_tau_norm_by_hand():
    features = make_features()
    tensors = dict(features.tensors)
    tensors["classifier.weight"] = torch.zeros(6, DIM)
    tensors["classifier.weight"][:, :2] = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [0.6, 0.8], [0.0, 0.5], [8.0, 6.0]])
    features = Artifact(features.id, features.meta, tensors)
    out = run(RetrainSettings(classifier="tau-norm", tau=1.0), features)
    expected = torch.zeros(6, DIM)
    expected[:, :2] = torch.tensor([[0.6, 0.8], [0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    assert torch.allclose(out.tensors["weight"], expected)
    assert torch.equal(out.tensors["bias"], torch.zeros(6))
    half = run(RetrainSettings(classifier="tau-norm", tau=0.5), features)
    assert torch.allclose(half.tensors["weight"][0, :2], torch.tensor([3.0, 4.0]) / math.sqrt(5.0))
    assert out.tensors["curve.loss"].numel() == 0 and "train_loss" not in out.metrics
    assert out.info["method"] == "τ-norm"


def test_lws_learns_only_per_class_scales():
    features = make_features()
    weight, bias = features["classifier.weight"], features["classifier.bias"]
    out = run(RetrainSettings(classifier="lws", epochs=10, batch_size=32, lr=1e-2), features)
    scales = out.tensors["weight"][:, 0] / weight[:, 0]  # (C,)
    # each class row is its stage-1 row times one scale, and the bias carries the same scale
    assert torch.allclose(out.tensors["weight"], weight * scales.unsqueeze(1), atol=1e-6)
    assert torch.allclose(out.tensors["bias"], bias * scales, atol=1e-6)
    assert not torch.allclose(scales, torch.ones(6))
    # the head-biased stage-1 biases are negative for tail classes; balanced training shrinks them (scale < head's)
    assert scales[5] < scales[0]
    stage1, _ = score(weight, bias, features, EvalSettings())
    lws, _ = score(out.tensors["weight"], out.tensors["bias"], features, EvalSettings())
    assert lws["few"] > stage1["few"] + 0.1
    assert out.info["method"] == "LWS"


def test_none_classifier_is_stage1_as_is():
    features = make_features()
    out = run(RetrainSettings(classifier="none"), features)
    assert torch.equal(out.tensors["weight"], features["classifier.weight"])
    assert torch.equal(out.tensors["bias"], features["classifier.bias"])
    stage1, _ = score(features["classifier.weight"], features["classifier.bias"], features, EvalSettings(), split="val")
    assert out.metrics["val_top1"] == stage1["top1"] and out.metrics["stage1_val_mean_class"] == stage1["mean_class"]


@pytest.mark.parametrize("augment", [NoAugment(), StgAugment()])
def test_same_seed_same_weights_other_seed_other_weights(augment):
    features = make_features()
    stg = make_stg(features)
    settings = RetrainSettings(augment=augment, **FAST)
    first = run(settings, features, stg, seed=3)
    again = run(settings, features, stg, seed=3)
    other = run(settings, features, stg, seed=4)
    assert torch.equal(first.tensors["weight"], again.tensors["weight"])
    assert torch.equal(first.tensors["bias"], again.tensors["bias"])
    assert not torch.equal(first.tensors["weight"], other.tensors["weight"])


def test_global_rng_is_untouched():
    features = make_features()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(RetrainSettings(augment=NoiseAugment(), **FAST), features)
    assert torch.equal(torch.rand(3), expected)


class Killed(Exception):
    pass


class KillAfter(Checkpoint):
    """A real store checkpoint that dies right after saving the given epoch, like a killed process."""

    def __init__(self, store, pending_id, epoch):
        super().__init__(store, pending_id)
        self.epoch = epoch

    def save(self, state):
        super().save(state)
        if state["epoch"] == self.epoch:
            raise Killed


def test_kill_and_resume_is_bit_identical(tmp_path):
    features = make_features(views=1)
    settings = RetrainSettings(augment=IsdaAugment(), epochs=4, batch_size=32, lr=1e-2)
    straight = run(settings, features)
    store = Store(tmp_path / ".artifacts")
    with pytest.raises(Killed):
        run(settings, features, checkpoint=KillAfter(store, "a" * 64, epoch=1))
    saved = store.load_checkpoint("a" * 64)
    assert saved["epoch"] == 1 and saved["augmenter"]["counts"].sum() > 0
    resumed = run(settings, features, checkpoint=Checkpoint(store, "a" * 64))
    assert torch.equal(resumed.tensors["weight"], straight.tensors["weight"])
    assert torch.equal(resumed.tensors["bias"], straight.tensors["bias"])
    assert torch.equal(resumed.tensors["curve.loss"], straight.tensors["curve.loss"])


def test_resume_starts_after_the_saved_epoch(tmp_path):
    features = make_features()
    settings = RetrainSettings(**FAST)
    store = Store(tmp_path / ".artifacts")
    with pytest.raises(Killed):
        run(settings, features, checkpoint=KillAfter(store, "b" * 64, epoch=1))
    epochs = []
    report = lambda task, done, total, **metrics: epochs.append(metrics["epoch"])  # noqa: E731
    generator = torch.Generator().manual_seed(0)
    retrain(settings, features, None, seed=0, device="cpu", generator=generator, progress=report,
            checkpoint=Checkpoint(store, "b" * 64))
    assert epochs == [3]


def test_missing_stg_names_the_flag():
    with pytest.raises(LtstgError, match="--stg"):
        run(RetrainSettings(augment=StgAugment()), make_features(), None)


def test_bad_inputs_fail_before_training():
    features = make_features()
    with pytest.raises(LtstgError, match="not trained"):
        run(RetrainSettings(classifier="tau-norm", augment=NoiseAugment()), features)
    other = make_features(dim=8)
    with pytest.raises(LtstgError, match="8-dimensional"):
        run(RetrainSettings(augment=StgAugment()), features, make_stg(other, dim=8))
    tensors = dict(features.tensors)
    tensors["train_labels"] = tensors["train_labels"].clone()
    tensors["train_labels"][0] = 6
    with pytest.raises(LtstgError, match="outside"):
        run(RetrainSettings(), Artifact(features.id, features.meta, tensors))
    tensors = dict(features.tensors)
    tensors["classifier.weight"] = tensors["classifier.weight"][:, :4]
    with pytest.raises(LtstgError, match="stage-1 classifier"):
        run(RetrainSettings(), Artifact(features.id, features.meta, tensors))


def test_mislas_starts_from_stage1_learns_scales_and_smooths_by_count(monkeypatch):
    from ltstg import training

    features = make_features()
    seen = []
    original = training.smoothed_cross_entropy

    def spy(logits, labels, epsilon):
        seen.append(epsilon.clone())
        return original(logits, labels, epsilon)

    monkeypatch.setattr("ltstg.stages.retrain.smoothed_cross_entropy", spy)
    settings = RetrainSettings(classifier="mislas", smooth_head=0.4, smooth_tail=0.1, epochs=10, batch_size=32, lr=1e-2)
    out = run(settings, features)
    assert out.info["init"] == "stage1" and out.info["method"] == "MiSLAS"
    epsilon = seen[0]
    assert epsilon[0].item() == pytest.approx(0.4) and epsilon[-1].item() == pytest.approx(0.1)
    assert (epsilon[:-1] >= epsilon[1:]).all()
    # one step at lr × lr_factor barely moves the linear layer: it started from the stage-1 classifier
    one_step = run(RetrainSettings(classifier="mislas", epochs=1, batch_size=1000, lr=1e-3), features)
    assert torch.allclose(one_step.tensors["weight"], features["classifier.weight"], atol=0.01)
    stage1, _ = score(features["classifier.weight"], features["classifier.bias"], features, EvalSettings())
    mislas, _ = score(out.tensors["weight"], out.tensors["bias"], features, EvalSettings())
    assert mislas["few"] > stage1["few"] + 0.1


def test_init_stage1_starts_crt_from_the_stage1_classifier():
    features = make_features()
    one_step = dict(epochs=1, batch_size=1000, lr=1e-6)  # one tiny step: the start is what comes out
    fresh = run(RetrainSettings(**one_step), features)
    warm = run(RetrainSettings(init="stage1", **one_step), features)
    assert warm.info["init"] == "stage1" and fresh.info["init"] == "fresh"
    assert torch.allclose(warm.tensors["weight"], features["classifier.weight"], atol=1e-4)
    assert not torch.allclose(fresh.tensors["weight"], features["classifier.weight"], atol=0.1)
    with pytest.raises(LtstgError, match="init 'fresh'"):
        run(RetrainSettings(classifier="lws", init="fresh"), features)


def cifar100_shaped_features(*, dim=64, seed=0):
    """Well-separated classes with the CIFAR-100-LT IM100 counts (500 … 5) and a stage-1 classifier as mixup
    training leaves one: class means as weights, norms and biases growing with the class count."""
    from ltstg.data.longtail import make_profile

    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor(make_profile(500, 100, 100, "exp"))  # (100,)
    means = nn.functional.normalize(torch.randn(100, dim, generator=g), dim=1) * 4  # (C, D)

    def draw(per_class):
        labels = torch.arange(100).repeat_interleave(per_class)
        return means[labels] + torch.randn(labels.numel(), dim, generator=g), labels

    train, train_labels = draw(counts)
    test, test_labels = draw(torch.full((100,), 20))
    val, val_labels = draw(torch.full((100,), 10))
    log_share = torch.log(counts.float() / counts.max())  # (C,), 0 … −4.6
    tensors = {
        "train_features": train, "train_labels": train_labels, "test_features": test, "test_labels": test_labels,
        "val_features": val, "val_labels": val_labels, "class_counts": counts,
        "classifier.weight": means * (1 + 0.05 * log_share).unsqueeze(1) / 4,
        "classifier.bias": 0.5 * log_share,
    }
    info = {"class_names": [f"c{c}" for c in range(100)], "many_above": 100, "few_below": 20}
    return Artifact("e" * 64, {"kind": "features", "info": info}, tensors)


def test_fresh_classifier_at_lr_1e4_for_10_epochs_does_not_converge_and_says_so():
    """What the CIFAR-100 recipes did before: the loss stays near ln 100 and the warning says why."""
    out = run(RetrainSettings(init="fresh", lr=1e-4, epochs=10), cifar100_shaped_features())
    assert out.metrics["train_loss"] > 0.9 * math.log(100)
    assert out.metrics["converged"] == 0.0
    assert any("did not converge" in note and "ln C" in note for note in out.notes)
    assert out.metrics["loss_floor"] == 0.0  # no smoothing: a perfect classifier could reach 0


def test_a_half_trained_fresh_classifier_below_stage1_on_validation_did_not_converge():
    """Thirty epochs at lr 1e-4: the loss has fallen below 0.9 · ln C, but it kept most of a uniform guess's and
    the classifier is far below the stage-1 one on validation (the 100-class set's 'fresh, lr 1e-4, 30 epochs')."""
    out = run(RetrainSettings(init="fresh", lr=1e-4, epochs=30), cifar100_shaped_features())
    assert 0.5 * math.log(100) < out.metrics["train_loss"] < 0.9 * math.log(100)
    assert out.metrics["val_mean_class"] < out.metrics["stage1_val_mean_class"] - 0.2
    assert out.metrics["converged"] == 0.0
    assert any("did not converge" in note and "below the stage-1 classifier on validation" in note for note in out.notes)


def cifar100_recipe_settings(candidates: bool):
    """Every distinct classifier setting (augmenters aside) the CIFAR-100 recipes train: their fixed rows, or the
    candidates their selected rows try."""
    from pathlib import Path

    from ltstg.recipe import NoAugment, load_recipe, method_candidates

    distinct = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "recipes" / "cifar100").glob("*.yaml")):
        recipe = load_recipe(path)
        for method in recipe.methods:
            for values, settings in method_candidates(recipe, method):
                if settings.classifier in ("crt", "mislas") and bool(values) == candidates:
                    # these CIFAR-100-shaped features stand for the BatchNorm-shifted ones too
                    plain = settings.model_copy(update={"augment": NoAugment(), "bn_shift": False})
                    distinct.setdefault(plain.model_dump_json(), (f"{path.name}: {method} {values}", plain))
    assert distinct
    return list(distinct.values())


def one_per_kind_of_training(settings: list) -> list:
    """The first setting of each classifier × optimizer × sampling × schedule step: the recipes' rows of one kind
    differ only in values (MiSLAS's smoothing per imbalance), which the slow test below covers."""
    kinds = {}
    for where, plain in settings:
        kinds.setdefault((plain.classifier, plain.optimizer, plain.sampling, plain.schedule_step), (where, plain))
    return list(kinds.values())


@pytest.mark.parametrize("every_row", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cifar100_recipes_train_a_converged_classifier(every_row):
    """The fixed classifier settings of the CIFAR-100 recipes (one of each kind in the quick suite, every one in
    the slow) converge on CIFAR-100-shaped features, well above the head-biased stage-1 classifier."""
    features = cifar100_shaped_features()
    stage1, _ = score(features["classifier.weight"], features["classifier.bias"], features, EvalSettings(), split="val")
    rows = cifar100_recipe_settings(candidates=False)
    for where, settings in rows if every_row else one_per_kind_of_training(rows):
        out = run(settings, features)
        assert out.metrics["converged"] == 1.0 and out.notes == [], (where, out.notes)
        assert out.metrics["train_loss"] < 0.5 * math.log(100), where
        assert out.metrics["val_top1"] > stage1["top1"] + 0.1, where  # 0.61 for the head-biased stage-1 classifier


@pytest.mark.slow
def test_cifar100_recipe_candidates_converge():
    """The candidates the selected rows try (lr × 0.3, 1, 3) converge too; one may lose, which is what validation
    is for (4 minutes: the quick suite checks the fixed rows)."""
    features = cifar100_shaped_features()
    for where, settings in cifar100_recipe_settings(candidates=True):
        out = run(settings, features)
        assert out.metrics["converged"] == 1.0, (where, out.notes)


def test_converged_classifier_has_no_warning():
    out = run(RetrainSettings(epochs=10, batch_size=32, lr=1e-2), make_features())
    assert out.metrics["converged"] == 1.0 and out.notes == []
    assert out.metrics["val_mean_class"] >= out.metrics["stage1_val_mean_class"]
    assert out.metrics["chance_loss"] == pytest.approx(math.log(6))


def memorising_stage1(features, steps=3000):
    """The features with their stage-1 classifier replaced by one fitted to the training features alone, with
    instance sampling and no regularisation, as a backbone's own head memorises its training images."""
    model = nn.Linear(features["train_features"].shape[1], len(COUNTS))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(features["train_features"]), features["train_labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tensors = {**features.tensors, "classifier.weight": model.weight.detach(), "classifier.bias": model.bias.detach()}
    return Artifact(features.id, features.meta, tensors)


def test_a_crt_that_generalises_better_than_a_memorising_stage1_is_not_a_false_alarm():
    """Issue 21's false alarm: cRT lifts held-out accuracy well above a stage-1 head that memorised the training
    features, so its class-balanced *training* accuracy is lower; that is no sign of an untrained classifier."""
    features = memorising_stage1(make_features(seed=3, dim=24))  # in 24 dimensions 428 training points separate
    stage1, _ = score(features["classifier.weight"], features["classifier.bias"], features, EvalSettings())
    out = run(RetrainSettings(epochs=10, batch_size=32, lr=1e-2, wd=1e-1), features)
    crt, _ = score(out.tensors["weight"], out.tensors["bias"], features, EvalSettings())
    train_logits = features["train_features"] @ features["classifier.weight"].T + features["classifier.bias"]
    assert (train_logits.argmax(1) == features["train_labels"]).float().mean() > 0.99  # it did memorise
    train_crt = out.tensors["weight"], out.tensors["bias"]
    balanced_train = per_class_accuracy((features["train_features"] @ train_crt[0].T + train_crt[1]).argmax(1),
                                        features["train_labels"], len(COUNTS)).mean()
    assert balanced_train < 0.97  # below stage 1's 100% on its own training features: today's check cries wolf
    assert crt["mean_class"] > stage1["mean_class"] + 0.05
    assert out.metrics["converged"] == 1.0 and out.notes == []


@pytest.mark.parametrize("classifier", ["crt", "lws", "mislas"])
def test_a_classifier_from_stage1_that_barely_moves_did_not_converge(classifier):
    """Issue 21's miss: at lr 1e-7 a classifier that starts from stage 1 stays the stage-1 classifier."""
    out = run(RetrainSettings(classifier=classifier, init="stage1", epochs=10, batch_size=32, lr=1e-7), make_features())
    assert out.metrics["moved"] < 1e-4
    assert out.metrics["converged"] == 0.0
    assert any("barely moved from the stage-1 classifier" in note for note in out.notes)
    trained = run(RetrainSettings(classifier=classifier, init="stage1", epochs=10, batch_size=32, lr=1e-2),
                  make_features())
    assert trained.metrics["moved"] > 1e-2 and trained.metrics["converged"] == 1.0, trained.notes


def confident_stage1(features, scale=8.0):
    """The features with a sharper stage-1 classifier: its logits × `scale`, as a long-trained backbone's head."""
    tensors = {**features.tensors, "classifier.weight": features["classifier.weight"] * scale,
               "classifier.bias": features["classifier.bias"] * scale}
    return Artifact(features.id, features.meta, tensors)


def test_the_loss_check_allows_for_the_smoothing_floor():
    """Issue 21's smoothing case: under label-aware smoothing (ε 0.4 → 0.1) a confident classifier from stage 1
    keeps a training loss above 0.9 · ln C, yet it trained: the loss is no sign of an untrained one there."""
    settings = RetrainSettings(classifier="mislas", smooth_head=0.4, smooth_tail=0.1, epochs=10, batch_size=32, lr=1e-3)
    out = run(settings, confident_stage1(make_features()))
    assert out.metrics["train_loss"] > 0.9 * math.log(len(COUNTS))  # what today's check called untrained
    assert 0.5 < out.metrics["loss_floor"] < out.metrics["train_loss"]
    assert out.metrics["moved"] > 1e-2
    assert out.metrics["converged"] == 1.0 and out.notes == []


def test_loss_floor_is_the_entropy_of_the_smoothed_targets():
    from ltstg.stages.retrain import loss_floor

    labels = torch.tensor([0, 0, 0, 1])
    assert loss_floor(torch.zeros(2), labels, "balanced") == 0.0
    eps = torch.tensor([0.4, 0.0])  # class 0's target is (0.8, 0.2): entropy 0.5004; class 1's is one-hot
    h = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert loss_floor(eps, labels, "balanced") == pytest.approx(h / 2)
    assert loss_floor(eps, labels, "instance") == pytest.approx(3 * h / 4)


def test_a_loss_still_falling_at_the_end_is_flagged():
    """A constant lr too small for the epochs leaves the loss falling as fast at the end as on average."""
    out = run(RetrainSettings(epochs=10, batch_size=32, lr=1e-3, schedule="constant"), make_features())
    assert out.metrics["tail_rate"] >= 0.5 * out.metrics["mean_rate"] > 0
    assert any("still falling" in note for note in out.notes) and out.metrics["converged"] == 0.0


@pytest.mark.parametrize("curve", [
    [0.346, 0.325, 0.319, 0.309, 0.314, 0.299, 0.295, 0.305, 0.311, 0.298],  # one thread, seed 0, lr 3e-4
    [0.272, 0.254, 0.237, 0.246, 0.245, 0.248, 0.256, 0.268, 0.246, 0.247],  # two threads, seed 0, lr 3e-3
])
def test_a_flat_noisy_end_of_a_cosine_curve_is_not_still_falling(curve):
    """LWS's curves on the main job: flat but for batch noise, which can put the last fifth of the epochs below
    the fifth before it; under the cosine schedule the lr is near 0 there, so no drop counts, while the same
    curve at a constant lr is read as still falling wherever the drop is large enough."""
    from ltstg.stages.retrain import convergence, convergence_notes

    weight, bias = torch.ones(2, 3), torch.zeros(2)
    metrics = convergence(curve, 0.0, (weight * 1.1, bias), (weight, bias), "stage1")
    assert convergence_notes(metrics, RetrainSettings(classifier="lws", schedule="cosine")) == []
    falling = metrics["tail_rate"] >= 0.5 * metrics["mean_rate"] and metrics["tail_rate"] > 0.02 * curve[-1]
    assert bool(convergence_notes(metrics, RetrainSettings(classifier="lws", schedule="constant"))) == falling


def test_stg_mu_modes_zero_and_relative():
    """With the same draws the three modes differ only by their mean shift: μβλ (eq3 − zero) and
    (m_head − m_y)βλ (eq3 − relative)."""
    features = make_features()
    stg = make_stg(features)
    inputs = TrainingFeatures(features["train_features"], features["train_labels"], None, features["class_counts"],
                              features["classifier.weight"], features["classifier.bias"])
    tail = features["train_labels"] == 5
    batch, labels = features["train_features"][tail], features["train_labels"][tail]  # (6, D)
    outs = {}
    for mode in ("eq3", "zero", "relative"):
        settings = RetrainSettings(augment=StgAugment(mu=mode, lam=1.0, t=0.999999))  # every dimension augmented
        augmenter = get_augmenter("stg").build(settings.augment, inputs, stg, torch.device("cpu"))
        outs[mode] = augmenter.augment(batch, labels, generator=torch.Generator().manual_seed(0))
    heads, _ = augmenter.borrowed(batch)  # (6,) class ids
    predicted_mu, _ = augmenter.predict(batch, torch.tensor([HEAD.index(h) for h in heads.tolist()]))
    beta = augmenter.beta[5]
    torch.testing.assert_close(outs["eq3"] - outs["zero"], predicted_mu * beta, atol=1e-5, rtol=1e-4)
    means = class_means(features["train_features"], features["train_labels"], torch.arange(6))  # (C, D)
    torch.testing.assert_close(outs["eq3"] - outs["relative"], (means[heads] - means[5]) * beta, atol=1e-5, rtol=1e-4)


def test_stg_whose_split_has_no_tail_is_refused_before_training():
    features = make_features()
    stg = make_stg(features)
    all_head = dict(stg.tensors, head_classes=torch.arange(6),
                    head_prototypes=class_means(features["train_features"], features["train_labels"], torch.arange(6)))
    info = dict(stg.info, num_tokens=6, split="stg.head_rule=count (more than 1 training images)")
    with pytest.raises(LtstgError, match="makes all 6 classes head.*head_rule"):
        run(RetrainSettings(augment=StgAugment(), **FAST), features, Artifact(stg.id, {"kind": "stg", "info": info}, all_head))


@pytest.mark.parametrize(
    "augment", [NoiseAugment(std=0.0), DropoutAugment(p=0.0), StgAugment(lam=0.0), IsdaAugment(lam=0.0)]
)
def test_a_zero_strength_augmenter_is_refused_before_training(augment, tmp_path):
    features = make_features()
    stg = make_stg(features) if augment.name == "stg" else None
    store = Store(tmp_path / ".artifacts")
    with pytest.raises(LtstgError, match="changes no sample.*plain cRT"):
        run(RetrainSettings(augment=augment, **FAST), features, stg, checkpoint=Checkpoint(store, "c" * 64))
    assert store.load_checkpoint("c" * 64) is None


def test_an_augmenter_that_changed_no_sample_in_an_epoch_stops_the_run(monkeypatch, tmp_path):
    """The backstop for what no setting shows: an augmenter that returns its input unchanged."""
    monkeypatch.setattr(AUGMENTERS["noise"], "augment", lambda self, features, labels, *, generator: features.clone())
    store = Store(tmp_path / ".artifacts")
    with pytest.raises(LtstgError, match="changed no training sample in epoch 1"):
        run(RetrainSettings(augment=NoiseAugment(), **FAST), make_features(), checkpoint=Checkpoint(store, "c" * 64))
    assert store.load_checkpoint("c" * 64) is None  # stopped before the first checkpoint


def test_augmented_share_counts_the_changed_draws():
    features = make_features()
    out = run(RetrainSettings(augment=StgAugment(), **FAST), features, make_stg(features))
    assert 0.2 < out.metrics["augmented_share"] < 0.9  # tail draws (4 of 6 classes, balanced) with t = 0.5
    noise = run(RetrainSettings(augment=NoiseAugment(), **FAST), features)
    assert noise.metrics["augmented_share"] == 1.0


def test_per_epoch_cosine_holds_each_epochs_start_value_as_mislas_sets_it():
    from ltstg.training import make_scheduler

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = make_scheduler(optimizer, 3, epochs=10, warmup_epochs=0, schedule="cosine", per="epoch")
    seen = []
    for _ in range(30):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    mislas = [0.5 * 0.1 * (1 + math.cos(epoch / 10 * math.pi)) for epoch in range(10)]  # its adjust_learning_rate
    assert seen == pytest.approx([lr for lr in mislas for _ in range(3)])
    assert seen[-1] == pytest.approx(0.1 * 0.0245, abs=1e-5)  # the last epoch is not at 0


def test_sgd_with_class_aware_sampling_resumes_bit_identically(tmp_path):
    """Kang et al.'s and MiSLAS's way: SGD with momentum, class-aware sampling, the lr stepped per epoch; the
    sampler's position is in the checkpoint, so a killed run continues with the same draws."""
    features = make_features()
    settings = RetrainSettings(classifier="mislas", optimizer="sgd", lr=0.1, wd=2e-4, sampling="class_aware",
                               schedule_step="epoch", epochs=4, batch_size=32)
    straight = run(settings, features)
    store = Store(tmp_path / ".artifacts")
    with pytest.raises(Killed):
        run(settings, features, checkpoint=KillAfter(store, "a" * 64, epoch=1))
    assert "sampler" in store.load_checkpoint("a" * 64)
    resumed = run(settings, features, checkpoint=Checkpoint(store, "a" * 64))
    assert torch.equal(resumed.tensors["weight"], straight.tensors["weight"])
    assert torch.equal(resumed.tensors["curve.loss"], straight.tensors["curve.loss"])
    assert straight.metrics["converged"] == 1.0


def test_the_optimizer_and_its_settings_change_the_result(monkeypatch):
    features = make_features()
    made = []
    real_sgd = torch.optim.SGD

    def watched(*args, **kwargs):
        made.append(kwargs)
        return real_sgd(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", watched)
    adam = run(RetrainSettings(**FAST), features).tensors["weight"]
    assert made == []
    sgd = run(RetrainSettings(**FAST, optimizer="sgd", wd=5e-4), features).tensors["weight"]
    assert made == [{"lr": 1e-2, "momentum": 0.9, "weight_decay": 5e-4}]
    slower = run(RetrainSettings(**FAST, optimizer="sgd", wd=5e-4, momentum=0.5), features).tensors["weight"]
    assert not torch.equal(adam, sgd) and not torch.equal(sgd, slower)
    aware = run(RetrainSettings(**FAST, sampling="class_aware"), features).tensors["weight"]
    assert not torch.equal(aware, adam)


def test_an_lr_set_per_epoch_cannot_warm_up():
    from ltstg.training import make_scheduler

    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(LtstgError, match="cannot warm up"):
        make_scheduler(optimizer, 3, epochs=10, warmup_epochs=1, schedule="cosine", per="epoch")


@pytest.mark.parametrize("augment", [NoiseAugment(std=0.5, scope="tail"), DropoutAugment(p=0.2, scope="tail"),
                                     IsdaAugment(lam=0.5, scope="tail")])
def test_an_augmenter_kept_to_the_tail_changes_the_stgs_tail_classes_only(monkeypatch, augment):
    """Issue 33: `augment.scope: tail` compares noise, dropout and ISDA with the STG on the classes it changes."""
    from ltstg.augment.scope import TailOnly

    features = make_features()
    stg = make_stg(features)
    calls, seen = _record(monkeypatch, TailOnly)
    out = run(RetrainSettings(augment=augment, epochs=2, batch_size=64), features, stg)
    before, labels, after = (torch.cat([call[i] for call in calls]) for i in range(3))
    head = (labels == 0) | (labels == 1)
    assert torch.equal(after[head], before[head])  # the STG's head classes reach the classifier untouched
    assert (after[~head] != before[~head]).any(dim=1).all()  # every tail draw is changed
    assert all(torch.equal(a, b) for (_, _, a), b in zip(calls, seen))
    assert 0 < out.metrics["augmented_share"] < 1


def test_a_tail_scope_draws_what_the_augmenter_draws_without_one():
    """The scope only puts head samples back: a tail sample gets the very draw it gets with scope all."""
    from ltstg.augment.scope import TailOnly

    features, labels = torch.randn(8, 4), torch.tensor([0, 1, 2, 3] * 2)
    everywhere = NoiseAugmenter(0.5).augment(features, labels, generator=torch.Generator().manual_seed(3))
    kept = TailOnly(NoiseAugmenter(0.5), torch.tensor([0, 1]), 4)
    tail_only = kept.augment(features, labels, generator=torch.Generator().manual_seed(3))
    head = labels < 2
    assert torch.equal(tail_only[head], features[head]) and torch.equal(tail_only[~head], everywhere[~head])
    isda = TailOnly(IsdaAugmenter(4, 4), torch.tensor([0, 1]), 4)
    assert set(isda.state_dict()) == {"means", "vars", "counts"}  # the checkpoint keeps ISDA's statistics


def test_the_stg_with_scope_all_shifts_head_samples_too():
    features = make_features()
    stg = make_stg(features)
    tail = run(RetrainSettings(augment=StgAugment(lam=1.0), **FAST), features, stg)
    every = run(RetrainSettings(augment=StgAugment(lam=1.0, scope="all"), **FAST), features, stg)
    head_rows = features["train_labels"] <= 1
    assert (tail.tensors["borrowed_head"][head_rows] == -1).all()
    assert (every.tensors["borrowed_head"][head_rows] >= 0).all()  # head samples borrow a head class too
    assert every.metrics["augmented_share"] > tail.metrics["augmented_share"]


def test_a_tail_scope_without_an_stg_is_refused():
    with pytest.raises(LtstgError, match="augment.scope tail needs an stg artifact"):
        run(RetrainSettings(augment=NoiseAugment(scope="tail")), make_features(), None)
