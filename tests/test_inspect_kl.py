"""Tests for ltstg.inspect.kl."""
import csv

import pytest
import torch
from fakes import gaussian_features
import torch.nn.functional as F

from ltstg.errors import LtstgError
from ltstg.inspect.kl import kl_csv, kl_report, kl_rows, resolve_class
from ltstg.models.gaussian import pairwise_kl
from ltstg.recipe import StgSettings
from ltstg.stages.fit_stg import fit_stg
from ltstg.models.stg import load_stg
from ltstg.store import Artifact, Store

DIM = 16
COUNTS = [150, 120, 40, 15, 6, 6]  # head: 0, 1 (> 100); tail: 2-5, classes 4 and 5 tie for rarest
NAMES = [f"c{c}" for c in range(len(COUNTS))]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_features(counts=COUNTS, *, dim=DIM, seed=0) -> Artifact:
    return gaussian_features(counts, dim=dim, seed=seed, spread=3.0)


def stored(store: Store, artifact_id: str, output) -> Artifact:
    """An Output written and read back in the real artifact format."""
    store.put(artifact_id, output.tensors, {"kind": output.kind, "info": output.info, "metrics": output.metrics})
    return store.get(artifact_id, output.kind)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """Features and an STG trained on them by the real fit-stg stage (few epochs), stored and reloaded."""
    features = make_features()
    settings = StgSettings(head_rule="count", head_min_count=100, hidden=32, epochs=2, batch_size=32, memory=64)
    output = fit_stg(settings, features, seed=0, device=torch.device("cpu"), generator=torch.Generator().manual_seed(0))
    store = Store(tmp_path_factory.mktemp("kl") / "store")
    return features, stored(store, "a" * 64, output), store


def test_matrix_is_the_closed_form_kl_of_the_stored_gaussians(fitted):
    features, stg, _ = fitted
    report = kl_report(stg, features, class_index=3, samples=5, seed=0)
    kl, mu, var = report.tensors["kl"], report.tensors["mu"], report.tensors["var"]
    assert kl.shape == (5, 5) and mu.shape == (5, DIM) and var.shape == (5, DIM)
    assert torch.equal(kl.diagonal(), torch.zeros(5, dtype=kl.dtype))
    assert (kl >= 0).all() and (kl[~torch.eye(5, dtype=torch.bool)] > 0).all()
    assert torch.allclose(kl, pairwise_kl(mu.double(), var.double()))
    # one entry against a Monte-Carlo estimate, so the matrix is KL(N_i ‖ N_j) and not its transpose
    g = torch.Generator().manual_seed(1)
    p = torch.distributions.Normal(mu[0].double(), var[0].double().sqrt())
    q = torch.distributions.Normal(mu[1].double(), var[1].double().sqrt())
    draws = mu[0].double() + var[0].double().sqrt() * torch.randn(200_000, DIM, generator=g, dtype=torch.float64)
    estimate = (p.log_prob(draws) - q.log_prob(draws)).sum(dim=1).mean().item()
    assert abs(kl[0, 1].item() - estimate) < 0.03 * kl[0, 1].item() + 0.02


def test_each_sample_borrows_its_nearest_head_and_gets_that_tokens_gaussian(fitted):
    features, stg, _ = fitted
    report = kl_report(stg, features, class_index=2, samples=8, seed=3)
    rows = features["train_features"][report.tensors["sample_index"]]  # (N, D)
    assert (features["train_labels"][report.tensors["sample_index"]] == 2).all()
    similarity = F.normalize(rows, dim=1) @ F.normalize(stg["head_prototypes"], dim=1).T  # (N, H)
    token = similarity.argmax(dim=1)
    assert torch.equal(report.tensors["borrowed_head"], stg["head_classes"][token])
    assert torch.allclose(report.tensors["cosine"], similarity.max(dim=1).values)
    with torch.no_grad():
        mu, var = load_stg(stg, "cpu")(rows, token)
    assert torch.allclose(report.tensors["mu"], mu) and torch.allclose(report.tensors["var"], var)
    assert report.info["borrowed_head_names"] == [NAMES[h] for h in report.tensors["borrowed_head"].tolist()]


def test_summary_metrics(fitted):
    features, stg, _ = fitted
    report = kl_report(stg, features, class_index=3, samples=6, seed=0)
    kl, heads = report.tensors["kl"], report.tensors["borrowed_head"]
    off = kl[~torch.eye(6, dtype=torch.bool)]
    assert report.metrics["mean_kl"] == pytest.approx(off.mean().item())
    assert report.metrics["min_kl"] == pytest.approx(off.min().item())
    assert report.metrics["max_kl"] == pytest.approx(off.max().item())
    assert report.metrics["distinct_heads"] == len(set(heads.tolist()))
    assert report.metrics["largest_share"] == max(heads.tolist().count(h) for h in set(heads.tolist()))
    assert report.kind == "kl-report"


def test_default_class_is_the_rarest_tail_class_highest_index_on_ties(fitted):
    features, stg, _ = fitted
    report = kl_report(stg, features)
    assert report.info["class_index"] == 5 and report.info["class_name"] == "c5"
    assert report.info["class_count"] == 6
    assert report.tensors["sample_index"].numel() == 5


def test_a_class_with_fewer_samples_than_asked_gives_all_of_them(fitted):
    features, stg, _ = fitted
    report = kl_report(stg, features, class_index=4, samples=10)
    members = torch.nonzero(features["train_labels"] == 4).flatten()
    assert torch.equal(report.tensors["sample_index"], members)
    assert report.notes == [f"class {report.info['class_name']} has {members.numel()} training samples, fewer than "
                            "the 10 asked: the report shows all of them"]
    assert kl_report(stg, features, class_index=4, samples=members.numel()).notes == []


def test_samples_are_reproducible_with_the_seed_and_change_with_another(fitted):
    features, stg, _ = fitted
    first = kl_report(stg, features, class_index=2, seed=7)
    again = kl_report(stg, features, class_index=2, seed=7)
    other = kl_report(stg, features, class_index=2, seed=8)
    assert torch.equal(first.tensors["sample_index"], again.tensors["sample_index"])
    assert torch.equal(first.tensors["kl"], again.tensors["kl"])
    assert not torch.equal(first.tensors["sample_index"], other.tensors["sample_index"])


def test_head_class_out_of_range_and_bad_sample_count_are_errors(fitted):
    features, stg, _ = fitted
    with pytest.raises(LtstgError, match="head class"):
        kl_report(stg, features, class_index=0)
    with pytest.raises(LtstgError, match="0 to 5"):
        kl_report(stg, features, class_index=6)
    with pytest.raises(LtstgError, match="0 to 5"):
        kl_report(stg, features, class_index=-1)
    with pytest.raises(LtstgError, match="at least 1 sample"):
        kl_report(stg, features, samples=0)


def test_empty_class_is_an_error_and_the_default_skips_it(fitted):
    _, stg, _ = fitted
    features = make_features([150, 120, 40, 15, 6, 0])
    with pytest.raises(LtstgError, match="no training samples"):
        kl_report(stg, features, class_index=5)
    assert kl_report(stg, features).info["class_index"] == 4


def test_stg_fit_on_other_features_is_an_error(fitted):
    _, stg, _ = fitted
    with pytest.raises(LtstgError, match="16-dimensional features but these are 8-dimensional"):
        kl_report(stg, make_features(dim=8))


def test_resolve_class_by_name_or_index():
    assert resolve_class("c3", NAMES) == 3
    assert resolve_class("4", NAMES) == 4
    assert resolve_class("2", ["0", "2", "1"]) == 1  # a name wins over an index
    with pytest.raises(LtstgError, match="unknown class 'dog'.*c0, c1"):
        resolve_class("dog", NAMES)
    with pytest.raises(LtstgError, match="0 to 5"):
        resolve_class("9", NAMES)


def test_class_by_name_reaches_the_report(fitted):
    features, stg, _ = fitted
    report = kl_report(stg, features, class_index=resolve_class("c3", NAMES), samples=3)
    assert report.info["class_index"] == 3 and report.info["class_name"] == "c3"
    assert (features["train_labels"][report.tensors["sample_index"]] == 3).all()


def test_csv_has_a_header_and_one_row_per_sample(fitted, tmp_path):
    features, stg, _ = fitted
    report = kl_report(stg, features, class_index=3, samples=4)
    path = kl_csv(report, tmp_path / "out" / "kl.csv")
    with open(path, newline="") as handle:
        lines = list(csv.reader(handle))
    assert len(lines) == 5
    assert lines[0] == ["sample", "train_index", "kl_to_1", "kl_to_2", "kl_to_3", "kl_to_4",
                        "borrowed_head", "borrowed_head_name", "cosine"]
    matrix = torch.tensor([[float(v) for v in line[2:6]] for line in lines[1:]], dtype=torch.float64)
    assert torch.allclose(matrix, report.tensors["kl"])
    assert [int(line[6]) for line in lines[1:]] == report.tensors["borrowed_head"].tolist()
    assert [line[7] for line in lines[1:]] == report.info["borrowed_head_names"]


def test_rows_read_the_same_from_a_stored_report(fitted):
    features, stg, store = fitted
    report = kl_report(stg, features, class_index=2, samples=3)
    reloaded = stored(store, "b" * 64, report)
    assert kl_rows(reloaded) == kl_rows(report)
    assert kl_rows(report)[1]["kl_to_1"] == pytest.approx(report.tensors["kl"][1, 0].item())
