import math

import pytest
import torch

from ltstg.classifiers.logit_adjust import LogitAdjustSettings, log_prior, logit_adjust
from ltstg.data.features import TrainingFeatures
from ltstg.errors import LtstgError
from ltstg.methods import get_classifier
from ltstg.recipe import EvalSettings, NoiseAugment, RetrainSettings, id_settings, load_recipe
from ltstg.stages.evaluate import score
from ltstg.stages.retrain import retrain
from ltstg.store import Artifact

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = [300, 100, 30, 10]


def features_artifact(counts=COUNTS, *, seed=0, dim=8):
    """Gaussian classes and a stage-1 classifier that learned the prior: nearest mean plus 1 · log π_y."""
    g = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(len(counts), dim, generator=g), dim=1) * 2  # (C, D)

    def draw(per_class):
        labels = torch.arange(len(counts)).repeat_interleave(torch.tensor(per_class))
        return means[labels] + torch.randn(labels.numel(), dim, generator=g), labels

    train, train_labels = draw(counts)
    test, test_labels = draw([50] * len(counts))
    prior = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    tensors = {
        "train_features": train, "train_labels": train_labels, "test_features": test, "test_labels": test_labels,
        "class_counts": torch.tensor(counts),
        "classifier.weight": means.clone(),
        "classifier.bias": (-means.square().sum(dim=1) / 2 + prior.log()).float(),
    }
    info = {"class_names": [f"c{c}" for c in range(len(counts))], "many_above": 100, "few_below": 20}
    return Artifact("a" * 64, {"kind": "features", "info": info}, tensors)


def run(settings, features):
    return retrain(settings, features, None, seed=0, device="cpu", generator=torch.Generator().manual_seed(0))


def test_the_bias_loses_tau_times_the_log_prior_by_hand():
    weight, bias = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.5, 0.0])
    inputs = TrainingFeatures(torch.zeros(4, 2), torch.tensor([0, 0, 0, 1]), None, torch.tensor([3, 1]), weight, bias)
    new_weight, new_bias = logit_adjust(LogitAdjustSettings(la_tau=1.0), inputs)
    assert torch.equal(new_weight, weight) and new_weight.data_ptr() != weight.data_ptr()
    # π = (3/4, 1/4): 0.5 − log 0.75 and 0 − log 0.25
    assert new_bias.tolist() == pytest.approx([0.5 - math.log(0.75), math.log(4)])
    half = logit_adjust(LogitAdjustSettings(la_tau=0.5), inputs)[1]
    assert half.tolist() == pytest.approx([0.5 - 0.5 * math.log(0.75), 0.5 * math.log(4)])
    assert torch.equal(logit_adjust(LogitAdjustSettings(la_tau=0.0), inputs)[1], bias)
    assert log_prior(torch.tensor([1, 1])).tolist() == pytest.approx([math.log(0.5)] * 2)


def test_registered_post_hoc_and_its_field_enters_only_its_own_ids():
    entry = get_classifier("logit-adjust")
    assert entry.post_hoc is logit_adjust and not entry.trainable and not entry.in_every_id
    assert entry.label == "Logit adj."
    assert "la_tau" not in id_settings(RetrainSettings())  # a cRT id is what it was before this method
    assert "la_tau" not in id_settings(RetrainSettings(classifier="tau-norm", la_tau=2.0))
    assert id_settings(RetrainSettings(classifier="logit-adjust", la_tau=2.0))["la_tau"] == 2.0
    with pytest.raises(LtstgError, match="retrain.la_tau: Input should be greater than or equal to 0"):
        load_recipe(None, {"retrain.classifier": "logit-adjust", "retrain.la_tau": -1})


def test_retrain_takes_the_learned_prior_out_and_lifts_the_rare_classes():
    features = features_artifact()
    out = run(RetrainSettings(classifier="logit-adjust"), features)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    assert torch.equal(out.tensors["weight"], features["classifier.weight"])
    expected = (features["classifier.bias"].double() - prior.log()).float()
    torch.testing.assert_close(out.tensors["bias"], expected)
    assert out.info["method"] == "Logit adj." and out.info["init"] == "stage1"
    assert out.tensors["curve.loss"].numel() == 0
    stage1, _ = score(features["classifier.weight"], features["classifier.bias"], features, EvalSettings())
    adjusted, _ = score(out.tensors["weight"], out.tensors["bias"], features, EvalSettings())
    assert adjusted["few"] > stage1["few"] + 0.1 and adjusted["top1"] > stage1["top1"]


def test_refused_with_an_augmenter_a_fresh_init_or_an_empty_class():
    features = features_artifact()
    with pytest.raises(LtstgError, match="not trained"):
        run(RetrainSettings(classifier="logit-adjust", augment=NoiseAugment()), features)
    with pytest.raises(LtstgError, match="init 'fresh'"):
        run(RetrainSettings(classifier="logit-adjust", init="fresh"), features)
    empty = features_artifact([300, 100, 30, 0])
    with pytest.raises(LtstgError, match=r"class\(es\) \[3\] have no training sample"):
        run(RetrainSettings(classifier="logit-adjust"), empty)
