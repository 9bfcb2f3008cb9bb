"""Metrics out: every artifact's training scalars as CSV and TensorBoard runs, `inspect curves --csv`, and
`eval --csv` per class; what the files hold is what the artifacts hold."""
import csv
import json

import pytest
from typer.testing import CliRunner

from ltstg.cli import app
from ltstg.store import Store

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")


def _read(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_run_logs_every_stages_scalars_as_csv_and_tensorboard(tiny_recipe_path, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.conftest import TINY_METHODS

    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + TINY_METHODS)
    board = logs = tmp_path / "board"  # the CSV files beside the TensorBoard runs
    store = tmp_path / "s"
    result = runner.invoke(app, ["--store", str(store), "--log", "tensorboard", str(board), "run", str(tiny_recipe_path)])
    assert result.exit_code == 0, result.output
    opened = Store(store)
    backbone = opened.find(None, "backbone")
    rows = _read(logs / f"backbone-{backbone.id[:12]}.csv")
    losses = [float(r["value"]) for r in rows if r["tag"] == "pretrain/loss"]
    assert losses == backbone["history.loss"].tolist()  # one per epoch, exactly as stored
    assert [int(r["step"]) for r in rows if r["tag"] == "pretrain/test_top1"] == backbone.info["history"]["eval_epoch"]
    assert len([r for r in rows if r["tag"] == "pretrain/img_s"]) == len(losses)
    stg = opened.find(None, "stg")
    assert [float(r["value"]) for r in _read(logs / f"stg-{stg.id[:12]}.csv") if r["tag"] == "fit_stg/anchor_share"] == \
        stg["curve.anchor_share"].tolist()
    assert [float(r["value"]) for r in _read(logs / f"stg-{stg.id[:12]}.csv") if r["tag"] == "fit_stg/loss"] == \
        stg["curve.loss"].tolist()
    kinds = sorted({path.name.split("-")[0] for path in logs.glob("*.csv")})
    assert kinds == ["backbone", "classifier", "report", "stg"]  # datasets and features keep no scalars
    events = EventAccumulator(str(board / f"backbone-{backbone.id[:12]}"))
    events.Reload()
    assert [event.value for event in events.Scalars("pretrain/loss")] == pytest.approx(losses, rel=1e-6)  # float32 in TB
    again = runner.invoke(app, ["--store", str(store), "--log", "tensorboard", str(board), "run", str(tiny_recipe_path)])
    assert again.exit_code == 0  # everything reused: the runs already there are not written twice
    assert len(list((board / f"backbone-{backbone.id[:12]}").iterdir())) == 1
    csv_only = tmp_path / "csv"
    assert runner.invoke(app, ["--store", str(store), "--log", "csv", str(csv_only), "run", str(tiny_recipe_path)]).exit_code == 0
    assert sorted(p.suffix for p in csv_only.iterdir()) == [".csv"] * len(list(logs.glob("*.csv")))  # no runs
    bad = runner.invoke(app, ["--store", str(store), "--log", "wandb", str(csv_only), "run", str(tiny_recipe_path)])
    assert bad.exit_code == 2 and "csv, tensorboard" in bad.output


def test_inspect_curves_and_eval_write_csv(tiny_recipe_path, tmp_path):
    store = tmp_path / "s"
    assert runner.invoke(app, ["--store", str(store), "run", str(tiny_recipe_path)]).exit_code == 0
    curves = tmp_path / "curves.csv"
    result = runner.invoke(app, ["--store", str(store), "inspect", "curves", "--out", str(tmp_path / "c.png"),
                                 "--csv", str(curves)])
    assert result.exit_code == 0, result.output
    backbone = Store(store).find(None, "backbone")
    assert {r["tag"] for r in _read(curves)} >= {"pretrain/loss", "pretrain/lr", "pretrain/test_top1"}
    assert len([r for r in _read(curves) if r["tag"] == "pretrain/lr"]) == len(backbone["history.lr"])
    per_class = tmp_path / "eval.csv"
    result = runner.invoke(app, ["--store", str(store), "--json", "eval", "--csv", str(per_class)])
    assert result.exit_code == 0, result.output
    report = Store(store).get(json.loads(result.stdout)["id"], "report")
    rows = _read(per_class)
    assert [float(r["accuracy"]) for r in rows] == report["per_class_accuracy"].tolist()
    assert [int(r["train_count"]) for r in rows] == [40, 18, 8, 4]  # TINY: 40 · 0.1^(c/3), Cao et al.'s profile
    bad = runner.invoke(app, ["--store", str(store), "eval", "--csv", str(tmp_path / "x.txt")])
    assert bad.exit_code == 2 and not (tmp_path / "x.txt").exists()
