import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ltstg.cli import app
from ltstg.errors import LtstgError
from ltstg.recipe import load_recipe
from ltstg.stages import Context
from ltstg.stages.pipeline import MethodRun, aggregate, methods_of, run_recipe
from ltstg.store import Artifact, Store
from ltstg.tables import markdown, methods_cells

METHODS = """
methods:
  CE: {classifier: none}
  cRT: {classifier: crt}
  cRT+STG: {augment: {name: stg, lam: 1.5}}
"""


@pytest.fixture
def recipe_path(tiny_recipe_path):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + METHODS)
    return tiny_recipe_path


def fake_report(method_metrics):
    return Artifact("r" * 64, {"kind": "report", "metrics": method_metrics}, {})


def test_aggregate_mean_and_sample_std_per_method():
    runs = [
        MethodRun(0, "cRT", fake_report({"top1": 0.5, "few": 0.1})),
        MethodRun(0, "STG", fake_report({"top1": 0.7, "few": 0.3})),
        MethodRun(1, "cRT", fake_report({"top1": 0.7, "few": 0.3})),
        MethodRun(1, "STG", fake_report({"top1": 0.9, "few": 0.4})),
        MethodRun(2, "cRT", fake_report({"top1": 0.6, "few": 0.2})),
        MethodRun(2, "STG", fake_report({"top1": 0.8, "few": 0.5})),
    ]
    rows = aggregate(runs)
    assert [r["method"] for r in rows] == ["cRT", "STG"]
    assert rows[0]["all"] == pytest.approx(0.6) and rows[0]["all_std"] == pytest.approx(0.1)
    assert rows[1]["few"] == pytest.approx(0.4) and rows[1]["few_std"] == pytest.approx(0.1)
    assert rows[0]["seeds"] == [0, 1, 2] and rows[0]["ece"] is None
    single = aggregate(runs[:1])
    assert single[0]["all"] == 0.5 and "all_std" not in single[0]
    table = markdown(methods_cells(rows))
    assert "| cRT | 60.0 ± 10.0 | – | – | 20.0 ± 10.0 | – | – |" in table


def test_a_classifier_that_did_not_converge_is_flagged_in_every_table():
    from ltstg.stages.evaluate import converged
    from ltstg.tables import wide_table

    runs = [MethodRun(seed, "cRT", fake_report({"top1": 0.6}), converged=seed != 1) for seed in (0, 1, 2)]
    runs += [MethodRun(seed, "STG", fake_report({"top1": 0.7})) for seed in (0, 1, 2)]
    rows = aggregate(runs)
    assert [row["not_converged"] for row in rows] == [1, 0]
    table = markdown(methods_cells(rows))
    assert "| cRT [not converged: 1 of 3] | 60.0 ± 0.0 |" in table and "| STG | 70.0 ± 0.0 |" in table
    for row in rows:
        row["swept"] = {"recipe": "im100"}
    _, _, body = wide_table(rows, "recipe", ["recipe"])
    assert body == [["cRT", "60.0 ± 0.0 [not converged: 1 of 3]"], ["STG", "70.0 ± 0.0"]]
    classifier = lambda value: Artifact("c" * 64, {"kind": "classifier", "metrics": value}, {})  # noqa: E731
    assert not converged(classifier({"converged": 0.0}))
    assert converged(classifier({"converged": 1.0})) and converged(classifier({}))  # stage 1's own: not trained here


def test_head_and_tail_accuracy_follow_the_stg_split():
    def report(per_class):
        return Artifact("r" * 64, {"kind": "report", "metrics": {"top1": 0.5}},
                        {"per_class_accuracy": torch.tensor(per_class)})

    runs = [
        MethodRun(0, "STG", report([1.0, 0.8, 0.2, float("nan")]), head_classes=(0, 1)),
        MethodRun(1, "STG", report([0.8, 0.8, 0.4, 0.0]), head_classes=(0, 1)),
        MethodRun(0, "cRT", report([1.0, 1.0, 0.0, 0.0])),  # no STG in its run: no split to score
    ]
    stg, crt = aggregate(runs)
    assert stg["head"] == pytest.approx((0.9 + 0.8) / 2) and stg["tail"] == pytest.approx((0.2 + 0.2) / 2)
    assert stg["head_std"] == pytest.approx(0.0707, abs=1e-4)  # a class without test samples is left out
    assert crt["head"] is None and crt["tail"] is None


def test_methods_selection(recipe_path):
    recipe = load_recipe(recipe_path)
    assert list(methods_of(recipe, None)) == ["CE", "cRT", "cRT+STG"]
    assert list(methods_of(recipe, ["cRT"])) == ["cRT"]
    with pytest.raises(LtstgError, match="unknown method"):
        methods_of(recipe, ["nope"])
    plain = load_recipe(None)
    assert list(methods_of(plain, None)) == ["default"]


def test_run_end_to_end_then_reuse_everything(recipe_path, tmp_path):
    runner = CliRunner()
    store = tmp_path / "store"
    first = runner.invoke(app, ["--store", str(store), "--json", "run", str(recipe_path)])
    assert first.exit_code == 0, first.output
    made = [Store(store).get(i) for i in Store(store).ids()]
    assert made and all(a.meta["run"]["threads"] == torch.get_num_threads() for a in made)  # CPU numbers depend on it
    payload = json.loads(first.stdout)
    assert [row["method"] for row in payload["rows"]] == ["CE", "cRT", "cRT+STG"]
    kinds = [a["kind"] for a in payload["artifacts"]]
    assert kinds == ["dataset", "backbone", "features", "stg"] + ["classifier", "report"] * 3
    assert not any(a["reused"] for a in payload["artifacts"])
    for row in payload["rows"]:
        assert 0.0 <= row["all"] <= 1.0 and row["ece"] is not None
    again = runner.invoke(app, ["--store", str(store), "--json", "run", str(recipe_path)])
    second = json.loads(again.stdout)
    assert all(a["reused"] for a in second["artifacts"])
    assert second["rows"] == payload["rows"]
    assert len(Store(store).ids()) == len(kinds)
    table = runner.invoke(app, ["--store", str(store), "run", str(recipe_path), "--until", "pretrain"])
    assert table.exit_code == 0 and "backbone" in table.stdout


def test_interrupted_run_resumes_to_the_same_result(recipe_path, tmp_path):
    recipe = load_recipe(recipe_path)
    whole = Context(store=Store(tmp_path / "whole"))
    runs, _ = run_recipe(whole, recipe, seeds=[0], methods=["cRT"])

    class Kill(Exception):
        pass

    def killer(task, done, total, **metrics):
        if task == "pretrain" and metrics.get("epoch", 0) >= 2:
            raise Kill()

    store = Store(tmp_path / "killed")
    with pytest.raises(Kill):
        run_recipe(Context(store=store, progress=killer), recipe, seeds=[0], methods=["cRT"])
    assert len(list((tmp_path / "killed" / "checkpoints").iterdir())) == 1
    resumed, _ = run_recipe(Context(store=store), recipe, seeds=[0], methods=["cRT"])
    assert resumed[0].report.id == runs[0].report.id
    assert resumed[0].report.metrics == runs[0].report.metrics
    assert list((tmp_path / "killed" / "checkpoints").iterdir()) == []
    backbone_id = store.list("backbone")[0].id
    killed_weights, whole_weights = store.get(backbone_id).tensors, whole.store.get(backbone_id).tensors
    assert killed_weights.keys() == whole_weights.keys()
    assert all(torch.equal(killed_weights[k], whole_weights[k]) for k in killed_weights)


def test_a_run_stopped_at_every_checkpoint_by_time_limit_ends_as_one_uninterrupted_run(recipe_path, tmp_path):
    """`--time-limit 0` stops each stage at its first epoch checkpoint (exit 3, one line, nothing committed by
    the stage in progress); rerunning the same command until it exits 0 gives the uninterrupted run's ids and
    numbers: stages 1, 2 and 3 each resumed from their checkpoint."""
    runner = CliRunner()
    command = ["run", str(recipe_path), "--methods", "cRT+STG"]
    whole = runner.invoke(app, ["--store", str(tmp_path / "whole"), "--json", *command])
    assert whole.exit_code == 0, whole.output
    store = tmp_path / "stopped"
    stops = []
    for _ in range(10):
        stopped = runner.invoke(app, ["--store", str(store), "--json", "--time-limit", "0", *command])
        if stopped.exit_code == 0:
            break
        assert stopped.exit_code == 3, stopped.output
        said = [line for line in stopped.stderr.splitlines() if line.startswith("stopped:")]
        assert len(said) == 1 and "--time-limit reached after epoch 1" in said[0] and stopped.stdout == ""
        stops.append(said[0].split()[1])  # the kind of the stage that stopped
        assert len(list((store / "checkpoints").glob("*.pt"))) == 1
    assert stops == ["backbone", "stg", "classifier"]  # each stage of the tiny recipe has two epochs
    rows, whole_rows = json.loads(stopped.stdout)["rows"], json.loads(whole.stdout)["rows"]
    assert rows == whole_rows, (rows, whole_rows)
    assert sorted(Store(store).ids()) == sorted(Store(tmp_path / "whole").ids())
    resumed = [a.kind for a in Store(store).list() if any("resuming from the checkpoint" in n for n in a.meta["notes"])]
    assert sorted(resumed) == ["backbone", "classifier", "stg"]


def test_time_limit_takes_durations_and_refuses_anything_else(tmp_path):
    from ltstg.cli import duration_seconds

    assert [duration_seconds(t) for t in ("0", "90", "45s", "90m", "1.5h", "2h30m", "1d")] == \
        [0, 90, 45, 5400, 5400, 9000, 86400]
    for bad in ("", "-1", "2x", "5h3", "1 h"):
        result = CliRunner().invoke(app, ["--store", str(tmp_path), "--time-limit", bad, "pretrain"])
        assert result.exit_code == 2 and "is not a duration" in result.output


def test_seeds_aggregate_through_the_cli(recipe_path, tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app, ["--store", str(tmp_path / "s"), "--json", "run", str(recipe_path), "--seeds", "0", "--seeds", "1", "--methods", "cRT"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert len(rows) == 1 and rows[0]["seeds"] == [0, 1] and len(set(rows[0]["reports"])) == 2
    assert "all_std" in rows[0]


@pytest.mark.slow
def test_real_cifar10_jpeg_pipeline_two_epochs(cifar10_jpeg, tmp_path):
    """The whole recipe on the real JPEG CIFAR-10-LT IM100 copy, stage 1 cut to two epochs."""
    recipe_file = Path(__file__).resolve().parents[1] / "recipes" / "cifar10" / "jpeg-im100-30ep.yaml"
    recipe = load_recipe(recipe_file, {"dataset.root": str(cifar10_jpeg), "pretrain.epochs": 2, "pretrain.warmup_epochs": 1})
    runs, results = run_recipe(Context(store=Store(tmp_path / "store")), recipe, seeds=[0])
    # CIFAR-10-LT IM100 keeps 12406 images; the head class keeps all 5000 of its own, so its 100 validation images
    # are taken out of them (the other classes lend theirs from the images the profile left unused)
    assert results[0].artifact.metrics["train"] == 12406 - 100 and results[0].artifact.metrics["val"] == 1000
    rows = {row["method"]: row for row in aggregate(runs)}
    assert set(rows) == set(recipe.methods)
    for row in rows.values():
        assert 0.15 < row["all"] <= 1.0  # ten classes: chance is 0.1; two epochs leave some methods near 0.2
    assert rows["cRT+mixup (Kang)"]["medium"] > rows["Mixup"]["medium"]  # re-balancing lifts the rarer classes (IM100 has no few class)


def test_seeds_keep_one_data_set_and_vary_from_retrain_shares_the_backbone(recipe_path, tmp_path):
    recipe = load_recipe(recipe_path)
    ctx = Context(store=Store(tmp_path / "store"))
    runs, results = run_recipe(ctx, recipe, seeds=[0, 1], methods=["cRT"], vary_from="retrain")
    by_kind: dict[str, set[str]] = {}
    for result in results:
        by_kind.setdefault(result.artifact.kind, set()).add(result.artifact.id)
    assert len(by_kind["dataset"]) == 1  # the subset seed, not the run seed, draws the data set
    assert len(by_kind["backbone"]) == len(by_kind["features"]) == 1  # stage 1 ran once, for seed 0
    assert len(by_kind["classifier"]) == 2 and len({r.report.id for r in runs}) == 2
    full, full_results = run_recipe(ctx, recipe, seeds=[0, 1], methods=["cRT"])
    assert len({r.artifact.id for r in full_results if r.artifact.kind == "dataset"}) == 1
    assert len({r.artifact.id for r in full_results if r.artifact.kind == "backbone"}) == 2
    with pytest.raises(LtstgError, match="--vary-from"):
        run_recipe(ctx, recipe, seeds=[0], vary_from="eval")


def test_synthetic_100_recipe_short_version_end_to_end(tmp_path):
    """The many-class path in CI: 100 classes, 66 tail classes, one short epoch each, for every row with fixed
    settings and one selecting pair on shifted features (MiSLAS's stage 2 with and without the STG fitted on
    them); the other selecting rows repeat these paths with more candidates (their grids: test_recipes)."""
    recipe_file = Path(__file__).resolve().parents[1] / "recipes" / "synthetic-100-lt.yaml"
    short = {
        "dataset.size": 16, "pretrain.model": "resnet20_cifar", "pretrain.epochs": 1, "pretrain.warmup_epochs": 0,
        "dataset.synthetic.test_per_class": 10, "stg.epochs": 1, "retrain.epochs": 2,
        # the authors' rows set 10 epochs of their own: 2 here too
        **{f"methods.{name}.epochs": 2 for name in ("cRT (Kang)", "MiSLAS", "MiSLAS (lr on val)", "MiSLAS+STG (on val)")},
        "methods.MiSLAS (lr on val).select": {"lr": [0.03, 0.1]},
        "methods.MiSLAS+STG (on val).select": {"lr": [0.03, 0.1], "augment.lam": [0.25, 0.5]},
    }
    recipe = load_recipe(recipe_file, short)
    fixed = [name for name in recipe.methods if "select" not in recipe.methods[name]]
    chosen = fixed + ["MiSLAS (lr on val)", "MiSLAS+STG (on val)"]
    runs, results = run_recipe(Context(store=Store(tmp_path / "store")), recipe, seeds=[0], methods=chosen)
    dataset = results[0].artifact
    assert dataset.metrics["classes"] == 100 and dataset.metrics["train"] == 10847
    assert (dataset.metrics["many"], dataset.metrics["medium"], dataset.metrics["few"]) == (35, 35, 30)
    stgs = [r.artifact for r in results if r.artifact.kind == "stg"]
    assert len(stgs) == 2  # one on the plain features, one on MiSLAS's shifted ones
    for stg in stgs:
        assert (stg.metrics["num_head_classes"], stg.metrics["num_tail_classes"]) == (34, 66)  # 80% of the images
    rows = {row["method"]: row for row in aggregate(runs)}
    assert set(rows) == set(chosen) and len(fixed) >= 14
    for row in rows.values():
        assert row["few"] is not None and 0.0 <= row["all"] <= 1.0
    assert rows["MiSLAS+STG (on val)"]["base"] == "MiSLAS (lr on val)"


def test_sweep_is_a_grid_that_reuses_shared_artifacts(recipe_path, tmp_path):
    from ltstg.stages.pipeline import run_sweep, sweep_grid

    assert sweep_grid({"a": [1, 2], "b": ["x", "y"]}) == [
        {"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"}, {"a": 2, "b": "y"}
    ]
    sweeps = {"stg.memory": [0, 16], "methods.cRT+STG.augment.lam": [0.5, 1.5]}
    rows, results = run_sweep(Context(store=Store(tmp_path / "s")), [recipe_path], {}, sweeps, methods=["cRT", "cRT+STG"])
    assert len(rows) == 8 and [row["swept"] for row in rows[::2]] == sweep_grid(sweeps)
    made = {}
    for result in results:
        made.setdefault(result.artifact.kind, set()).add(result.artifact.id)
    assert len(made["backbone"]) == 1 and len(made["stg"]) == 2  # stage 1 once; one STG per memory size
    assert len(made["classifier"]) == 1 + 4  # plain cRT does not depend on the sweep; cRT+STG per combination
    with pytest.raises(LtstgError, match="stg.memory: expected a size >= 0, or auto"):
        run_sweep(Context(store=Store(tmp_path / "t")), [recipe_path], {}, {"stg.memory": [16, -1]})
    assert not (tmp_path / "t" / "objects").exists()  # the bad value stopped the sweep before any work


def test_sweep_through_the_cli_has_a_column_per_field(recipe_path, tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["--store", str(tmp_path / "s"), "run", str(recipe_path), "--methods", "cRT+STG",
                                 "--sweep", "methods.cRT+STG.augment.lam=0.5,1.5", "--markdown"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert lines[0].startswith("| Method | methods.cRT+STG.augment.lam | All |") and len(lines) == 4
    assert "| 0.5 |" in lines[2] and "| 1.5 |" in lines[3]
    bad = runner.invoke(app, ["--store", str(tmp_path / "s"), "run", str(recipe_path), "--sweep", "stg.memory"])
    assert bad.exit_code == 2 and "expected FIELD=V1,V2" in bad.stderr


def test_sweep_pivoted_on_a_field_has_a_column_per_value(recipe_path, tmp_path):
    runner = CliRunner()
    store = ["--store", str(tmp_path / "s")]
    sweep = ["--methods", "cRT", "--methods", "cRT+STG", "--sweep", "methods.cRT+STG.augment.lam=0.5,1.5"]
    result = runner.invoke(app, [*store, "run", str(recipe_path), *sweep, "--columns", "methods.cRT+STG.augment.lam",
                                 "--markdown"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert lines[0] == "| Method | methods.cRT+STG.augment.lam=0.5 | methods.cRT+STG.augment.lam=1.5 |"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| cRT", "| cRT+STG"]
    crt = lines[2].strip("| ").split(" | ")[1:]
    assert crt[0] == crt[1]  # plain cRT does not read lam: one classifier in both columns
    payload = json.loads(runner.invoke(app, [*store, "--json", "run", str(recipe_path), *sweep, "--columns",
                                             "methods.cRT+STG.augment.lam"]).stdout)
    assert payload["columns"] == "methods.cRT+STG.augment.lam" and len(payload["rows"]) == 4
    unswept = runner.invoke(app, [*store, "run", str(recipe_path), *sweep, "--columns", "stg.memory"])
    assert unswept.exit_code == 2 and "--columns stg.memory: not a swept field" in unswept.stderr
    assert unswept.stderr.count("\n") == 1  # refused before any stage ran


def test_several_recipes_run_into_one_table_with_a_column_each(recipe_path, tmp_path):
    """Table 1 is one recipe per imbalance (each with its own MiSLAS settings): `--columns recipe` lines them up."""
    stronger = recipe_path.parent / "stronger-stg.yaml"
    stronger.write_text(recipe_path.read_text().replace("lam: 1.5", "lam: 0.5"))
    runner = CliRunner()
    store = tmp_path / "s"
    both = ["--store", str(store), "run", str(recipe_path), str(stronger), "--methods", "cRT", "--methods", "cRT+STG"]
    result = runner.invoke(app, [*both, "--columns", "recipe", "--markdown"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert lines[0] == f"| Method | recipe={recipe_path.stem} | recipe=stronger-stg |"
    crt = lines[2].strip("| ").split(" | ")
    assert crt[0] == "cRT" and crt[1] == crt[2]  # one backbone, one cRT classifier: the recipes differ in stage 3 only
    payload = json.loads(runner.invoke(app, [*both[:2], "--json", *both[2:]]).stdout)
    assert payload["recipes"] == [str(recipe_path), str(stronger)]
    assert payload["swept"] == {"recipe": [recipe_path.stem, "stronger-stg"]}
    assert [row["swept"] for row in payload["rows"]] == [{"recipe": recipe_path.stem}] * 2 + [{"recipe": "stronger-stg"}] * 2
    assert len({row["reports"][0] for row in payload["rows"] if row["method"] == "cRT+STG"}) == 2

    broken = recipe_path.parent / "broken.yaml"
    broken.write_text(recipe_path.read_text().replace("  memory: 16", "  memory: -1"))
    refused = runner.invoke(app, ["--store", str(tmp_path / "t"), "run", str(recipe_path), str(broken)])
    assert refused.exit_code == 2 and "memory" in refused.stderr
    assert not (tmp_path / "t" / "objects").exists()  # the second recipe's problem stopped the first from running
    lone = runner.invoke(app, ["--store", str(store), "run", str(recipe_path), "--columns", "recipe"])
    assert lone.exit_code == 2 and "--columns recipe: not a swept field; give several recipes" in lone.stderr


@pytest.mark.parametrize("extra, message", [
    (["--methods", "cRT+STG λ0.5"], "unknown method(s) cRT+STG λ0.5"),  # the first recipe has it, the second not
    (["--report", "r.html"], "--report needs one recipe"),
    (["--columns", "recipe", "--until", "pretrain"], "--columns needs a run up to eval"),
])
def test_several_recipes_are_refused_before_any_work(recipe_path, tmp_path, extra, message):
    second = recipe_path.parent / "second.yaml"
    second.write_text(recipe_path.read_text() + "  cRT+STG λ0.5: {augment: {name: stg, lam: 0.5}}\n")
    store = tmp_path / "s"
    result = CliRunner().invoke(app, ["--store", str(store), "run", str(second), str(recipe_path), *extra])
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert not (store / "objects").exists()


def test_a_recipe_given_twice_is_refused(recipe_path, tmp_path, monkeypatch):
    monkeypatch.chdir(recipe_path.parent)
    result = CliRunner().invoke(app, ["--store", str(tmp_path / "s"), "run", recipe_path.name, f"./{recipe_path.name}"])
    assert result.exit_code == 2 and "is given twice" in result.stderr


EVERY_METHOD = """
methods:
  CE: {classifier: none}
  cRT: {classifier: crt}
  LWS: {classifier: lws}
  tau: {classifier: tau-norm, tau: 0.5}
  MiSLAS: {classifier: mislas, smooth_head: 0.3, smooth_tail: 0.1, lr_factor: 0.5}
  cRT-stage1: {classifier: crt, init: stage1, sampling: instance}
  STG: {augment: {name: stg, lam: 1.5}}
  STG-rel: {augment: {name: stg, lam: 1.0, mu: relative}}
  ISDA: {augment: {name: isda, lam: 0.5}}
  Noise: {augment: {name: noise, std: 0.5}}
  Dropout: {augment: {name: dropout, p: 0.2}}
"""

# The ids of the tiny pipeline, pinned: a refactor must not move them, or every artifact a user already has would be
# recomputed and the README's ids would point nowhere. Pinned at the issue-19 restructuring (a52b857) and moved once
# since, on purpose, by issue 21: every data set gained a validation split (and dataset.val_per_class / val_share).
# An id hashes the settings and the parents' ids, never trained weights (ltstg.store.artifact_id): it holds on any CPU.
PINNED_IDS = {
    "dataset": "9075b2cd68772e21",
    "backbone": "dfa463004585f825",
    "features": "0e71715f9afad04a",
    "stg": "21457dc44d40fdd5",
    "classifier CE": "8026107ef97c2608",
    "report CE": "49943bac427094f9",
    "classifier cRT": "38a422ddc6d68099",
    "report cRT": "e90566a92f0c7c74",
    "classifier LWS": "3982a1f2a33ae175",
    "report LWS": "b1a17d9c38a176f3",
    "classifier tau": "fb3d7bee5d915e91",
    "report tau": "91df551ee827e798",
    "classifier MiSLAS": "7d729e7477b7e9ac",
    "report MiSLAS": "6cab4b5423758c85",
    "classifier cRT-stage1": "734ce72c9323de57",
    "report cRT-stage1": "cbb85ebcbae1e6f8",
    "classifier STG": "5f4aef26529fdeca",
    "report STG": "f03dde30b90d482d",
    "classifier STG-rel": "f6495adbb5bc4dc7",
    "report STG-rel": "555bb4f608fdea0e",
    "classifier ISDA": "8bb5453196f8a05a",
    "report ISDA": "b42455c92c5eddf8",
    "classifier Noise": "57ac36c76ff9f8dd",
    "report Noise": "cd7ea910dcc48c39",
    "classifier Dropout": "440990f7beeb2aa0",
    "report Dropout": "1aace647108970e7",
}


def test_every_artifact_id_of_the_tiny_pipeline_is_pinned(tmp_path, one_thread):
    from tests.conftest import TINY

    path = tmp_path / "every.yaml"
    path.write_text(TINY + EVERY_METHOD)
    runs, results = run_recipe(Context(store=Store(tmp_path / "store")), load_recipe(path), seeds=[0])
    ids = {r.artifact.kind: r.artifact.id[:16] for r in results if r.artifact.kind in ("dataset", "backbone", "features", "stg")}
    for run in runs:
        ids[f"classifier {run.method}"] = run.report.parents[0][:16]
        ids[f"report {run.method}"] = run.report.id[:16]
    assert ids == PINNED_IDS


SELECTING = """
methods:
  cRT: {classifier: crt}
  cRT+noise (std on val): {augment: {name: noise}, select: {augment.std: [0.05, 50.0]}}
"""


def shuffled_test_labels(monkeypatch):
    """Make every features artifact hold its test labels in a random order, as a test split with other labels."""
    from ltstg.stages import extract_features as module

    real = module.extract_features

    def shuffled(*args, **kwargs):
        out = real(*args, **kwargs)
        labels = out.tensors["test_labels"]
        out.tensors["test_labels"] = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(1))]
        return out

    monkeypatch.setattr(module, "extract_features", shuffled)


def test_selection_chooses_on_validation_per_seed_and_never_reads_the_test_split(tiny_recipe_path, tmp_path,
                                                                                 monkeypatch, one_thread):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + SELECTING)
    recipe = load_recipe(tiny_recipe_path)
    method = "cRT+noise (std on val)"
    assert [values for values, _ in methods_of(recipe, None)[method]] == [{"augment.std": 0.05}, {"augment.std": 50.0}]
    runs, results = run_recipe(Context(store=Store(tmp_path / "a")), recipe, seeds=[0, 1], vary_from="retrain")
    rows = {row["method"]: row for row in aggregate(runs)}
    selected = rows[method]
    assert "chosen" not in rows["cRT"]
    assert len(selected["chosen"]) == 2 and len(selected["candidates"]) == 2
    for seed_candidates, chosen in zip(selected["candidates"], selected["chosen"]):
        scores = [c["val_mean_class"] for c in seed_candidates]
        best = seed_candidates[scores.index(max(scores))]
        assert best["chosen"] and best["values"] == chosen and sum(c["chosen"] for c in seed_candidates) == 1
    store = Store(tmp_path / "a")
    for run, seed_candidates in zip([r for r in runs if r.method == method], selected["candidates"]):
        chosen_id = next(c["classifier"] for c in seed_candidates if c["chosen"])
        assert run.report.parents[0] == chosen_id  # the report scores the chosen classifier, and only it
    reports = [r.artifact for r in results if r.artifact.kind == "report"]
    assert len(reports) == 4  # one per method and seed: candidates that lost are never scored on test
    assert store.get(chosen_id).kind == "classifier"

    shuffled_test_labels(monkeypatch)
    again, _ = run_recipe(Context(store=Store(tmp_path / "b")), recipe, seeds=[0, 1], vary_from="retrain")
    rows_again = {row["method"]: row for row in aggregate(again)}
    assert rows_again[method]["chosen"] == selected["chosen"]
    assert [[c["val_mean_class"] for c in seed] for seed in rows_again[method]["candidates"]] == \
        [[c["val_mean_class"] for c in seed] for seed in selected["candidates"]]
    assert rows_again["cRT"]["all"] != rows["cRT"]["all"]  # the test split really changed


def test_select_is_checked_before_any_work(tiny_recipe_path, tmp_path):
    for select, message in [
        ("{augment.std: [0.5]}", "give at least two candidate values"),
        ("{augment.std: [0.5, 0.5]}", "a candidate is listed twice"),
        ("{augment.stdd: [0.5, 1]}", "augment.stdd"),
        ("{augment.std: [0.5, -1]}", "augment.std=-1"),
        ("[augment.std]", "expected a mapping"),
    ]:
        tiny_recipe_path.write_text(tiny_recipe_path.read_text().split("methods:")[0]
                                    + f"methods:\n  noise: {{augment: {{name: noise}}, select: {select}}}\n")
        with pytest.raises(LtstgError, match=message):
            load_recipe(tiny_recipe_path)
    assert not (tmp_path / ".artifacts").exists()


def test_a_selecting_method_cannot_be_retrained_alone(tiny_recipe_path):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + SELECTING)
    with pytest.raises(LtstgError, match="ltstg run --methods"):
        load_recipe(tiny_recipe_path, method="cRT+noise (std on val)")


def test_different_candidate_budgets_are_said(tiny_recipe_path, tmp_path):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + """
methods:
  noise: {augment: {name: noise}, select: {augment.std: [0.1, 0.5, 1.5]}}
  dropout: {augment: {name: dropout}, select: {augment.p: [0.1, 0.2]}}
""")
    notes = []
    run_recipe(Context(store=Store(tmp_path / "store"), note=notes.append), load_recipe(tiny_recipe_path),
               seeds=[0], until="dataset")
    assert any("different numbers of candidates (noise 3, dropout 2)" in note for note in notes)


def test_selection_needs_validation_scores():
    """Classifiers made on features without a validation split cannot be selected among: one clear error."""
    from ltstg.recipe import RetrainSettings
    from ltstg.stages.pipeline import select

    candidates = [({"lr": 0.001}, RetrainSettings(lr=0.001)), ({"lr": 0.01}, RetrainSettings(lr=0.01))]
    old = [Artifact(c * 64, {"kind": "classifier", "metrics": {"train_loss": 0.5}}, {}) for c in "ab"]
    with pytest.raises(LtstgError, match="selects on the validation split, but classifier aaaaaaaaaaaa has no validation"):
        select("m", candidates, old)
    scored = [Artifact(c * 64, {"kind": "classifier", "metrics": {"val_mean_class": v}}, {}) for c, v in (("a", 0.7), ("b", 0.7))]
    values, chosen, tried = select("m", candidates, scored)
    assert values == {"lr": 0.001} and chosen.id == "a" * 64  # the first of equals
    assert [t["chosen"] for t in tried] == [True, False]


def test_a_choice_on_the_edge_of_its_grid_is_said_recorded_and_marked(tiny_recipe_path, tmp_path):
    """Issue 33: a grid whose best value is its lowest or highest does not hold the choice. Two values: whichever
    wins is on an edge."""
    from ltstg.tables import chosen_cell

    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + """
methods:
  noise: {augment: {name: noise}, select: {augment.std: [0.1, 2.0]}}
""")
    notes = []
    runs, _ = run_recipe(Context(store=Store(tmp_path / "store"), note=notes.append), load_recipe(tiny_recipe_path),
                         seeds=[0])
    [run] = runs
    where = "lowest" if run.chosen == {"augment.std": 0.1} else "highest"
    assert run.edges == {"augment.std": where}
    assert any(f"noise, seed 0, chose on the edge of its grid: augment.std={run.chosen['augment.std']} ({where} of "
               "[0.1, 2.0])" in note for note in notes), notes
    [row] = aggregate(runs)
    assert row["edges"] == [{"augment.std": where}]
    assert chosen_cell(row) == f"std={run.chosen['augment.std']} ({where})"


def test_grid_edges_are_the_lowest_and_highest_numbers_tried():
    from ltstg.stages.pipeline import grid_edges

    grid = [({"lr": lr, "mu": mu}, None) for lr in (0.01, 0.03, 0.1) for mu in ("eq3", "zero")]
    assert grid_edges(grid, {"lr": 0.03, "mu": "zero"}) == {}  # inside; text values have no edge
    assert grid_edges(grid, {"lr": 0.01, "mu": "eq3"}) == {"lr": "lowest"}
    assert grid_edges(grid, {"lr": 0.1, "mu": "eq3"}) == {"lr": "highest"}
    assert grid_edges([({"lr": 0.1}, None)], {"lr": 0.1}) == {}  # one value: nothing was chosen


BASED = """
methods:
  noise-base: {augment: {name: none}, select: {lr: [0.01, 0.03]}}
  noise: {augment: {name: noise, std: 0.5}, select: {lr: [0.01, 0.03]}, base: noise-base}
"""


def test_an_augmenter_is_compared_with_its_own_base_seed_by_seed(tiny_recipe_path, tmp_path):
    """Issue 33: `base` names the method an augmenter is added to; the row shows top-1 minus the base's, paired
    by seed, and the table a `vs base` column after All."""
    from ltstg.tables import methods_cells

    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + BASED)
    runs, _ = run_recipe(Context(store=Store(tmp_path / "store")), load_recipe(tiny_recipe_path), seeds=[0, 1],
                         vary_from="retrain")
    rows = {row["method"]: row for row in aggregate(runs)}
    top1 = {(r.method, r.seed): r.report.metrics["top1"] for r in runs}
    deltas = [top1["noise", seed] - top1["noise-base", seed] for seed in (0, 1)]
    assert rows["noise"]["base"] == "noise-base" and "base" not in rows["noise-base"]
    assert rows["noise"]["vs_base"] == pytest.approx(sum(deltas) / 2)
    assert rows["noise"]["vs_base_std"] == pytest.approx(abs(deltas[0] - deltas[1]) / 2 ** 0.5)
    cells = methods_cells(list(rows.values()))
    assert cells.header[cells.header.index("All") + 1] == "vs base"
    assert cells.body[1][cells.header.index("vs base")].startswith(f"{100 * rows['noise']['vs_base']:+.1f} ± ")
    assert cells.body[0][cells.header.index("vs base")] == "–"


@pytest.mark.parametrize("methods, message", [
    ("  a: {lr: 0.01}\n  b: {augment: {name: noise}, lr: 0.03, base: a}\n", "'a' trains another stage 3 (retrain.lr differs)"),
    ("  a: {select: {lr: [0.01, 0.03]}}\n  b: {augment: {name: noise}, select: {lr: [0.01, 0.1]}, base: a}\n",
     "'a' trains another stage 3 (the grid it chooses from on validation differs)"),
    ("  b: {augment: {name: noise}, base: nope}\n", "methods.b.base: 'nope' is not another method of the recipe"),
    ("  b: {augment: {name: noise}, base: b}\n", "methods.b.base: 'b' is not another method"),
])
def test_a_base_that_is_not_the_same_stage_3_is_refused(tiny_recipe_path, methods, message):
    from ltstg.stages.pipeline import check_run

    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + "methods:\n" + methods)
    with pytest.raises(LtstgError, match=re.escape(message)):
        check_run(load_recipe(tiny_recipe_path), "eval", None, "pretrain")


def test_a_base_left_out_of_the_run_is_named(tiny_recipe_path):
    from ltstg.stages.pipeline import check_run

    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + BASED)
    with pytest.raises(LtstgError, match=re.escape("'noise-base' is left out of this run; add it (--methods 'noise-base')")):
        check_run(load_recipe(tiny_recipe_path), "eval", ["noise"], "pretrain")


def test_an_augmenter_kept_to_the_tail_has_the_stg_fitted_and_as_its_parent(tiny_recipe_path, tmp_path):
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + "methods:\n  cRT: {}\n"
                                "  noise (tail): {augment: {name: noise, scope: tail}}\n")
    store = Store(tmp_path / "store")
    runs, _ = run_recipe(Context(store=store), load_recipe(tiny_recipe_path), seeds=[0])
    (stg,) = store.list("stg")
    parents = {r.method: store.get(r.report.parents[0]).parents for r in runs}
    assert parents["noise (tail)"][1:] == [stg.id] and len(parents["cRT"]) == 1


def test_one_step_past_an_edge_follows_the_grid():
    from ltstg.recipe import step_past

    assert step_past([3.0e-4, 1.0e-3, 3.0e-3], "highest") == pytest.approx(9.0e-3)  # lr × 3 past 0.003
    assert step_past([0.5, 1.0, 1.5], "lowest") == 0.25
    assert step_past([10, 20], "highest") == 40 and isinstance(step_past([10, 20], "highest"), int)
    assert step_past([-1.0, 0.0], "lowest") == -2.0  # not positive: by the difference


def test_extend_tries_one_step_past_a_chosen_edge_and_counts_it(tiny_recipe_path, tmp_path):
    """Issue 33: a two-value grid always chooses an edge; `extend: true` trains one more candidate past it, the
    same rule for every method, said on stderr and kept in the row's candidates."""
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + "methods:\n  noise: {augment: {name: noise}, "
                                "select: {augment.std: [0.1, 0.2]}, extend: true}\n")
    notes = []
    runs, _ = run_recipe(Context(store=Store(tmp_path / "store"), note=notes.append), load_recipe(tiny_recipe_path),
                         seeds=[0, 1], vary_from="retrain")
    for run in runs:
        extended = [record for record in run.candidates if record["extended"]]
        assert len(run.candidates) == 3 and len(extended) == 1
        assert extended[0]["values"]["augment.std"] in (0.05, 0.4)
        assert run.chosen == next(r["values"] for r in run.candidates if r["chosen"])
    assert sum("so it also tries augment.std=" in note and "(extend)" in note for note in notes) == 2


def test_extend_on_a_method_that_does_not_select_is_refused(tiny_recipe_path):
    from ltstg.stages.pipeline import check_run

    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + "methods:\n  noise: {augment: {name: noise}, extend: true}\n")
    with pytest.raises(LtstgError, match=re.escape("methods.noise.extend: true or false, on a method that selects")):
        check_run(load_recipe(tiny_recipe_path), "eval", None, "pretrain")
