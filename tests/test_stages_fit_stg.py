"""Tests for ltstg.stages.fit_stg."""
import math

import pytest
import torch

from ltstg.errors import LtstgError
from ltstg.recipe import StgSettings
from ltstg.stages import Checkpoint
from ltstg.stages.fit_stg import fit_stg
from ltstg.models.stg import load_stg
from ltstg.store import Artifact, Store

DIM = 8
# four head classes (> 100 images) and four tail classes
COUNTS = [260, 230, 200, 170, 40, 20, 10, 5]
SMALL = dict(hidden=32, epochs=2, batch_size=64, memory=200)


pytestmark = pytest.mark.usefixtures("one_thread")


def _features(counts=COUNTS, *, seed: int = 0) -> Artifact:
    """Class centres plus a spread that grows with each sample's position along dimension 0.

    Sample i of class c sits at centre_c + 2·z_i·e_0 + (0.1 + z_i)·n_i on the other dimensions, z_i ~ U(0, 1),
    n_i ~ N(0, I): the within-class shape depends on where a sample lies, not only on its class.
    """
    g = torch.Generator().manual_seed(seed)
    counts_t = torch.tensor(counts)
    labels = torch.repeat_interleave(torch.arange(len(counts)), counts_t)  # (N,)
    centres = 3.0 * torch.randn(len(counts), DIM, generator=g)  # (C, D)
    position = torch.rand(len(labels), 1, generator=g)  # (N, 1)
    noise = torch.randn(len(labels), DIM, generator=g)  # (N, D)
    offset = torch.cat([2.0 * position, (0.1 + position) * noise[:, 1:]], dim=1)  # (N, D)
    train = centres[labels] + offset  # (N, D)
    tensors = {
        "train_features": train,
        "train_labels": labels,
        "test_features": centres.repeat_interleave(2, dim=0),
        "test_labels": torch.arange(len(counts)).repeat_interleave(2),
        "class_counts": counts_t,
        "classifier.weight": torch.zeros(len(counts), DIM),
        "classifier.bias": torch.zeros(len(counts)),
    }
    info = {
        "class_names": [f"c{c}" for c in range(len(counts))],
        "groups": ["many" if n > 100 else "few" for n in counts],
        "num_classes": len(counts),
        "feature_dim": DIM,
    }
    return Artifact(id="f" * 64, meta={"kind": "features", "info": info}, tensors=tensors)


def _fit(features=None, *, seed: int = 0, progress=None, checkpoint=None, **settings):
    kwargs = {} if progress is None else {"progress": progress}
    return fit_stg(
        StgSettings(**{**SMALL, **settings}), features if features is not None else _features(),
        seed=seed, device=torch.device("cpu"), generator=torch.Generator().manual_seed(seed),
        checkpoint=checkpoint, **kwargs,
    )


def _weights(output) -> dict[str, torch.Tensor]:
    return {name: value for name, value in output.tensors.items() if name.startswith("stg.")}


def _same_weights(a, b) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(
    ("counts", "head_min_count", "expected"),
    [
        ([300, 101, 100, 20], 100, [0, 1]),  # strictly more than head_min_count
        ([40, 300, 40, 100, 20, 40], 100, [0, 1, 3]),  # one above -> top half by count; the 40s tie, lowest index wins
        ([30, 10, 20, 5], 100, [0, 2]),  # none above -> top half
    ],
)
def test_head_classes_with_top_half_fallback(counts, head_min_count, expected):
    output = _fit(_features(counts), head_rule="count", head_min_count=head_min_count, epochs=1, holdout=0.0)
    assert output.tensors["head_classes"].tolist() == expected
    assert output.info["head_class_names"] == [f"c{c}" for c in expected]
    assert output.tensors["stg.tokens"].shape == (len(expected), DIM)


@pytest.mark.parametrize("imbalance", [100, 50, 10])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_default_split_leaves_a_tail_at_every_cifar_imbalance(imbalance, num_classes):
    """The paper reports STG gains at IM 10 and 50 too, so every CIFAR-LT setting needs tail classes; the old
    count rule (> 100 images) leaves CIFAR-10-LT IM10 (5000 … 500) without one."""
    from ltstg.data.longtail import make_profile
    from ltstg.stages.fit_stg import select_head_classes

    counts = torch.tensor(make_profile(5000 if num_classes == 10 else 500, num_classes, imbalance, "exp"))
    head = select_head_classes(counts, StgSettings())
    assert 2 <= head.numel() < num_classes
    assert counts[head].sum() >= 0.8 * counts.sum() > counts[head[:-1]].sum()  # the fewest largest classes
    assert counts[head].min() >= counts.max() / imbalance  # head classes are the largest ones
    if num_classes == 10 and imbalance == 10:
        assert select_head_classes(counts, StgSettings(head_rule="count")).numel() == 10  # why the default changed


@pytest.mark.parametrize(
    ("counts", "settings", "expected"),
    [
        ([100, 300, 50, 40], {"head_rule": "share", "head_share": 0.5}, [0, 1]),  # 300 alone holds 61%; at least 2
        ([100, 300, 50, 40], {"head_rule": "share", "head_share": 0.8}, [0, 1]),  # 300 + 100 hold 82%
        ([100, 300, 50, 40], {"head_rule": "share", "head_share": 0.85}, [0, 1, 2]),  # 92% with the 50
        ([10, 20, 30, 40, 50], {"head_rule": "half"}, [3, 4]),
    ],
)
def test_share_and_half_rules(counts, settings, expected):
    from ltstg.stages.fit_stg import select_head_classes

    assert select_head_classes(torch.tensor(counts), StgSettings(**settings)).tolist() == expected


def test_split_and_tail_are_recorded_and_an_all_head_split_says_so():
    output = _fit(epochs=1, holdout=0.0)
    assert output.info["tail_classes"] == [c for c in range(8) if c not in output.tensors["head_classes"].tolist()]
    assert output.info["split"].startswith("stg.head_rule=share")
    assert output.metrics["num_tail_classes"] == len(output.info["tail_classes"]) > 0
    everything = _fit(head_rule="count", head_min_count=1, epochs=1, holdout=0.0)
    assert everything.info["tail_classes"] == [] and any("every class head" in n for n in everything.notes)


def test_a_pool_too_small_for_most_anchors_is_said_and_recorded():
    fed = _fit(epochs=1, holdout=0.0)
    assert fed.metrics["anchor_share"] > 0.9 and not any("never trained" in n for n in fed.notes)
    # 8 head classes share a batch of 4 and no memory: most samples meet no same-class neighbour
    starved = _fit(_features([40] * 8), epochs=1, holdout=0.0, head_rule="count", head_min_count=1, batch_size=4, memory=0)
    assert starved.metrics["anchor_share"] < 0.5
    assert any("never trained the STG" in n for n in starved.notes)


def test_rejects_a_single_class_and_a_head_class_without_valid_anchors():
    with pytest.raises(LtstgError, match="at least 2 classes"):
        _fit(_features([300]))
    # top half is classes 0 and 1; class 1 keeps 2 samples, so no sample has min_neighbors=2 neighbours
    with pytest.raises(LtstgError, match="head class c1 .*min_neighbors"):
        _fit(_features([6, 2, 1, 1]), holdout=0.0)


def test_only_head_features_are_used():
    clean = _features()
    poisoned_train = clean["train_features"].clone()
    poisoned_train[clean["train_labels"] >= 4] = float("nan")  # every tail feature
    poisoned = Artifact(clean.id, clean.meta, {**clean.tensors, "train_features": poisoned_train})
    a, b = _fit(clean), _fit(poisoned)
    assert all(torch.isfinite(t).all() for t in b.tensors.values() if t.is_floating_point())
    assert all(torch.isfinite(torch.tensor(v)) for v in b.metrics.values())
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_output_tensors_metrics_and_reload():
    features = _features()
    output = _fit(features, epochs=3)
    assert output.kind == "stg"
    head = output.tensors["head_classes"]
    assert head.dtype == torch.int64 and head.tolist() == [0, 1, 2, 3]
    labels, train = features["train_labels"], features["train_features"]
    expected = torch.stack([train[labels == c].mean(dim=0) for c in range(4)])
    assert torch.allclose(output.tensors["head_prototypes"], expected, atol=1e-5)
    assert output.tensors["curve.loss"].shape == (3,)
    assert torch.isfinite(output.tensors["curve.loss"]).all()
    assert output.tensors["stg.tokens"].shape == (4, DIM)
    assert set(output.metrics) == {
        "train_loss", "anchor_share", "num_head_classes", "num_tail_classes", "heldout_mu_mse", "heldout_var_mse",
        "trivial_mu_mse", "trivial_var_mse", "heldout_gain",
    }
    assert output.metrics["train_loss"] == pytest.approx(float(output.tensors["curve.loss"][-1]))
    info = output.info
    # 10% of each head class held out: 26 + 23 + 20 + 17
    assert info["num_heldout"] == 86 and info["num_train"] == sum(COUNTS[:4]) - 86
    assert (info["num_features"], info["num_tokens"], info["hidden"], info["depth"]) == (DIM, 4, 32, 2)
    # load_stg rebuilds the same network: same predictions as the stored weights give
    artifact = Artifact("s" * 64, {"kind": "stg", "info": info}, output.tensors)
    model = load_stg(artifact, "cpu")
    assert not model.training
    state = model.state_dict()
    assert all(torch.equal(state[k[4:]], v) for k, v in _weights(output).items())


def test_beats_the_class_level_predictor_on_held_out_samples():
    output = _fit(epochs=12, hidden=64, memory=600, lr=3e-3)
    metrics = output.metrics
    # full-class ground truth: μ_i ≈ class mean − a_i is sample-specific, Σ_i is nearly the class variance,
    # so the class-level guess (μ̄ = 0) loses on μ and the STG must learn that shift from a_i + p_y
    assert metrics["heldout_mu_mse"] < 0.5 * metrics["trivial_mu_mse"]
    assert metrics["heldout_gain"] > 2.0
    assert output.tensors["curve.loss"][-1] < 0.5 * output.tensors["curve.loss"][0]


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = _fit(seed=3), _fit(seed=3), _fit(seed=4)
    assert _same_weights(a, b)
    assert torch.equal(a.tensors["curve.loss"], b.tensors["curve.loss"]) and a.metrics == b.metrics
    assert not _same_weights(a, c)


def test_memory_size_changes_the_result():
    # 780 training samples: the memory passes 600 entries within the first epoch
    outputs = [_fit(memory=m, epochs=1) for m in (0, 600, 1200)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert not _same_weights(outputs[i], outputs[j])


def test_balanced_batches_change_the_result():
    assert not _same_weights(_fit(balanced=True), _fit(balanced=False))


class _Kill(Exception):
    pass


def test_killed_and_resumed_run_matches_an_uninterrupted_one(tmp_path):
    settings = dict(epochs=4, smoothing=0.5)
    uninterrupted = _fit(**settings)
    checkpoint = Checkpoint(Store(tmp_path / "store"), "a" * 64)

    def kill_in_epoch_3(task, done, total, **metrics):
        if metrics.get("epoch") == 3:
            raise _Kill

    with pytest.raises(_Kill):
        _fit(progress=kill_in_epoch_3, checkpoint=checkpoint, **settings)
    assert checkpoint.load()["epoch"] == 1  # epochs 1 and 2 (0-based 0, 1) are saved

    epochs_seen = []
    resumed = _fit(progress=lambda task, done, total, **m: epochs_seen.append(m["epoch"]), checkpoint=checkpoint, **settings)
    assert min(epochs_seen) == 3  # continued, did not start over
    assert _same_weights(uninterrupted, resumed)
    assert torch.equal(uninterrupted.tensors["curve.loss"], resumed.tensors["curve.loss"])
    assert uninterrupted.metrics == resumed.metrics


def test_a_training_step_reads_the_device_once_whether_it_has_an_anchor(monkeypatch):
    """Host syncs stall a GPU: a fit-stg step makes exactly one (issue 23, row 10; there were five), counted
    on the CPU from the ops that would wait for a GPU."""
    import ltstg.stages.fit_stg as fit_module
    from tests.host_syncs import HostSyncs

    real, per_step = fit_module._fit_step, []

    def counted(*args, **kwargs):
        with HostSyncs() as syncs:
            real(*args, **kwargs)
        per_step.append(syncs.seen)

    monkeypatch.setattr(fit_module, "_fit_step", counted)
    _fit(epochs=1, smoothing=0.5)
    assert per_step and all(seen == ["aten._local_scalar_dense.default"] for seen in per_step), per_step[:3]


def _masked_step(fit, batch, trained, loss_sum, anchors):
    """The step as it was before the host syncs went (dda8951): the pool of Eq. 1 is the batch and the memory's
    entries, gathered densely; the anchor count is read back and `trained` set through a boolean mask."""
    from ltstg.models.stg_targets import stg_loss, transformation_targets

    settings = fit.settings
    batch_x, batch_t, batch_ids = fit.features[fit.train_rows[batch]], fit.train_t[batch], batch
    memory_x, memory_t, memory_ids = fit.memory.contents()
    target_mu, target_var, valid = transformation_targets(
        batch_x, batch_t, batch_ids,
        torch.cat([batch_x, memory_x]), torch.cat([batch_t, memory_t]), torch.cat([batch_ids, memory_ids]),
        num_classes=fit.memory.class_counts.numel(), min_neighbors=settings.min_neighbors,
    )
    target_mu, target_var = fit.smoothed.update(batch_ids, target_mu, target_var, valid)
    num_valid = int(valid.sum())
    if num_valid:
        pred_mu, pred_var = fit.model(batch_x, batch_t)
        loss = stg_loss(pred_mu, pred_var, target_mu, target_var, valid,
                        kind=settings.loss, mu_weight=settings.mu_weight, var_weight=settings.var_weight)
        fit.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        fit.optimizer.step()
        loss_sum += loss.detach().double() * num_valid
        anchors += num_valid
        trained[batch_ids[valid]] = True
    fit.memory.push(batch_x, batch_t, batch_ids)


@pytest.mark.parametrize("settings", [
    dict(epochs=2, smoothing=0.5),
    dict(epochs=2, smoothing=0.9, balanced=True, min_neighbors=30),
])
def test_the_sync_free_step_trains_what_the_masked_one_did(monkeypatch, settings):
    """The sync-free step against the masked one it replaced, both run here (a pin would hold only for the
    kernels of the machine that wrote it): the same anchors, and losses and weights equal up to float rounding.

    The two differ only in the order Eq. 1's float64 class sums are added (running memory sums + the batch's
    against one sum over the gathered pool), about 1e-16 relative; the STG then trains in float32, where two
    epochs of Adam steps carry that into the last few bits. rel=1e-5 is a hundred float32 epsilons: far
    below what a wrong pool moves them (an anchor's copy in memory counted as its own neighbour: 3e-4 relative
    in the loss, 3e-3 in the weights)."""
    import ltstg.stages.fit_stg as fit_module

    sync_free = _fit(**settings)
    monkeypatch.setattr(fit_module, "_fit_step", _masked_step)
    masked = _fit(**settings)
    assert sync_free.metrics["anchor_share"] == masked.metrics["anchor_share"]  # a count: exact
    assert sync_free.tensors["curve.loss"].tolist() == pytest.approx(masked.tensors["curve.loss"].tolist(), rel=1e-5)
    a, b = _weights(sync_free), _weights(masked)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: the CPU counts the same ops above")
def test_on_a_gpu_a_fit_stg_step_syncs_once(monkeypatch):
    import warnings

    import ltstg.stages.fit_stg as fit_module

    real, per_step = fit_module._fit_step, []

    def counted(*args, **kwargs):
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                real(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        per_step.append(len(caught))

    monkeypatch.setattr(fit_module, "_fit_step", counted)
    fit_stg(StgSettings(**{**SMALL, "epochs": 1}), _features(), seed=0, device=torch.device("cuda"),
            generator=torch.Generator(device="cuda").manual_seed(0))
    assert per_step and max(per_step) == 1


def test_memory_auto_keeps_the_papers_1200_at_cifar_and_grows_with_a_long_head():
    """`stg.memory: auto` (issue 24): 8 expected entries of the least drawn head class, never below the paper's m."""
    from ltstg.data.longtail import make_profile
    from ltstg.stages.fit_stg import EXPECTED_ENTRIES, PAPER_MEMORY, select_head_classes, with_memory_size

    cifar = torch.tensor(make_profile(5000, 10, 100, "exp"))  # CIFAR-10-LT IM100
    assert with_memory_size(StgSettings(), cifar).memory == PAPER_MEMORY
    assert with_memory_size(StgSettings(memory=600), cifar).memory == 600  # a size given is kept
    long_head = torch.tensor([1000] * 50 + [101] * 950 + [5] * 3000)  # iNaturalist-like: many smallish head classes
    settings = StgSettings(head_rule="count")
    head = select_head_classes(long_head, settings)
    resolved = with_memory_size(settings, long_head).memory
    assert resolved == math.ceil(EXPECTED_ENTRIES * long_head[head].sum() / 101) > PAPER_MEMORY
    balanced = with_memory_size(settings.model_copy(update={"balanced": True}), long_head).memory
    assert balanced == EXPECTED_ENTRIES * head.numel()


def test_a_large_memory_costs_a_step_no_more_than_a_small_one_and_trains_every_head_sample():
    """The step reads the memory's per-class sums, so its work does not grow with the memory (issue 24): with
    a memory that holds every sample, every head sample is an anchor."""
    import ltstg.stages.fit_stg as fit_module
    from tests.host_syncs import LargestOutput

    largest = {}
    real = fit_module._fit_step

    def measured(fit, *args, **kwargs):
        with LargestOutput() as seen:
            real(fit, *args, **kwargs)
        largest[fit.memory.size] = max(largest.get(fit.memory.size, 0), seen.largest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fit_module, "_fit_step", measured)
        small = _fit(epochs=1, memory=16)
        large = _fit(epochs=1, memory=4096)
    assert largest[4096] == largest[16]  # nothing of the memory's size is made per step
    assert large.metrics["anchor_share"] == 1.0 and large.metrics["anchor_share"] >= small.metrics["anchor_share"]


def test_float16_running_targets_halve_their_memory_and_train_like_float32():
    """stg.target_storage=float16 (issue 24): 2 x N x D running targets at half the bytes; the blend is done in
    float32 and only the stored value is rounded, so the STG trains to nearly the same loss."""
    from ltstg.recipe import id_settings
    from ltstg.stages import fit_stg as fit_module

    seen = {}
    real = fit_module._setup

    def spy(*args, **kwargs):
        fit = real(*args, **kwargs)
        seen[fit.settings.target_storage] = fit.smoothed.mu.dtype
        return fit

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fit_module, "_setup", spy)
        full = _fit(epochs=2, smoothing=0.9)
        half = _fit(epochs=2, smoothing=0.9, target_storage="float16")
    assert seen == {"float32": torch.float32, "float16": torch.float16}
    assert half.tensors["curve.loss"].tolist() == pytest.approx(full.tensors["curve.loss"].tolist(), rel=0.02)
    assert "target_storage" not in id_settings(StgSettings())  # float32 keeps every STG id it had
    assert id_settings(StgSettings(target_storage="float16"))["target_storage"] == "float16"


def test_slow_checkpoints_are_paced_to_a_twentieth_of_the_run_and_quick_ones_kept_every_epoch():
    """fit-stg's running targets make its checkpoint N x D (issue 24): once writing one takes seconds, an epoch
    is checkpointed only when 20x that time has passed since the last; a resume is exact from any epoch."""
    from ltstg.stages.fit_stg import CHECKPOINT_PACE, _CheckpointPace

    now = [0.0]
    pace = _CheckpointPace(clock=lambda: now[0])
    written = []
    for epoch in range(12):
        now[0] += 10.0  # a 10 s epoch
        if pace.due():
            with pace.writing():
                now[0] += 5.0 if epoch else 0.01  # the first write is quick, the later ones take 5 s
            written.append(epoch)
    assert written[:2] == [0, 1]  # quick: the next epoch is checkpointed too
    gaps = [b - a for a, b in zip(written[1:], written[2:])]
    assert gaps and all(gap * 10 + 5 >= CHECKPOINT_PACE * 5 for gap in gaps)  # >= 100 s between slow writes
    assert len(written) < 12
