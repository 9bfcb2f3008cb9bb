import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ltstg.cli import app
from ltstg.store import Store

runner = CliRunner()


def invoke(*args, store):
    return runner.invoke(app, ["--store", str(store), *args])


def test_help_lists_every_subcommand():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("make-dataset", "pretrain", "fit-stg", "retrain", "eval", "inspect", "run"):
        assert command in result.stdout


@pytest.mark.parametrize(
    "text, expected",
    [
        ("stg:\n  memroy: 600\n", "stg.memroy: Extra inputs are not permitted"),
        ("dataset:\n  imbalance: many\n", "dataset.imbalance: Input should be a valid number"),
        ("stg:\n  memory: -1\n", "stg.memory: expected a size >= 0, or auto"),
        ("stg: [1, 2\n", "line 2"),
    ],
)
def test_bad_recipe_exits_2_with_one_line_and_writes_nothing(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    store = tmp_path / "store"
    result = invoke("make-dataset", "--recipe", str(path), store=store)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and expected in lines[0]
    assert "Traceback" not in result.output
    assert not store.exists()


def test_bad_flag_value_is_a_recipe_error(tmp_path):
    result = invoke("make-dataset", "--imb", "0.5", store=tmp_path / "s")
    assert result.exit_code == 2
    assert "dataset.imbalance: Input should be greater than or equal to 1" in result.stderr


def test_make_dataset_writes_once_then_reuses(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    first = invoke("--json", "make-dataset", "--recipe", str(tiny_recipe_path), store=store)
    assert first.exit_code == 0, first.output
    payload = json.loads(first.stdout)
    assert payload["kind"] == "dataset" and payload["reused"] is False
    assert payload["metrics"]["train"] == 70 and payload["metrics"]["classes"] == 4
    again = invoke("--json", "make-dataset", "--recipe", str(tiny_recipe_path), "--name", "tiny", store=store)
    assert json.loads(again.stdout)["reused"] is True and json.loads(again.stdout)["id"] == payload["id"]
    assert "reused dataset" in again.stderr
    assert len(Store(store).ids()) == 1
    assert Store(store).resolve("tiny", "dataset") == payload["id"]


def test_inspect_artifacts_lineage_verify(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    made = json.loads(invoke("--json", "make-dataset", "--recipe", str(tiny_recipe_path), "--name", "d", store=store).stdout)
    listing = invoke("--json", "inspect", "artifacts", store=store)
    assert listing.exit_code == 0
    rows = json.loads(listing.stdout)["artifacts"]
    assert [r["id"] for r in rows] == [made["id"]] and rows[0]["names"] == ["d"] and rows[0]["kind"] == "dataset"
    table = invoke("inspect", "artifacts", store=store)
    assert made["id"][:12] in table.stdout and "train 70" in table.stdout
    lineage = invoke("--json", "inspect", "lineage", "d", store=store)
    assert json.loads(lineage.stdout) == {"id": made["id"], "kind": "dataset", "parents": []}
    verify = invoke("--json", "inspect", "verify", store=store)
    assert verify.exit_code == 0 and json.loads(verify.stdout)["corrupt"] == []
    path = Store(store).path(made["id"])
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    broken = invoke("inspect", "verify", store=store)
    assert broken.exit_code == 2 and "1 of 1 artifacts failed verification" in broken.stderr
    assert made["id"][:12] in broken.stdout
    using = invoke("pretrain", "--recipe", str(tiny_recipe_path), store=store)
    assert using.exit_code == 2 and "corrupt" in using.stderr


def test_lineage_shows_a_damaged_or_deleted_artifact_instead_of_refusing(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    made = json.loads(invoke("--json", "make-dataset", "--recipe", str(tiny_recipe_path), "--name", "d", store=store).stdout)
    path = Store(store).path(made["id"])
    path.write_bytes(b"not a safetensors file")
    for ref in ("d", made["id"][:10]):
        damaged = invoke("inspect", "lineage", ref, store=store)
        assert damaged.exit_code == 0 and made["id"][:12] in damaged.stdout, damaged.output
    path.unlink()
    deleted = invoke("inspect", "lineage", "d", store=store)
    assert deleted.exit_code == 0 and "missing" in deleted.stdout


def test_missing_and_ambiguous_artifacts_are_clear_errors(tmp_path):
    result = invoke("pretrain", "--dataset", "abc", store=tmp_path / "s")
    assert result.exit_code == 2 and "no artifact or name 'abc'" in result.stderr
    result = invoke("pretrain", store=tmp_path / "s")
    assert result.exit_code == 2 and "no dataset artifact" in result.stderr
    result = invoke("inspect", "lineage", "abc", store=tmp_path / "s")
    assert result.exit_code == 2


def test_cuda_on_a_machine_without_one(tiny_recipe_path, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = invoke("--device", "cuda", "make-dataset", "--recipe", str(tiny_recipe_path), store=tmp_path / "s")
    assert result.exit_code == 2 and "no CUDA device" in result.stderr


def test_wrong_image_root_is_one_line(tmp_path):
    result = invoke("make-dataset", "imagefolder", "--root", str(tmp_path / "nowhere"), store=tmp_path / "s")
    assert result.exit_code == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "nowhere" in result.stderr
    assert not (tmp_path / "s").exists()


def test_inspect_dataset_table_json_and_plot(tiny_recipe_path, tmp_path):
    from PIL import Image

    store = tmp_path / "store"
    invoke("make-dataset", "--recipe", str(tiny_recipe_path), store=store)
    result = invoke("--json", "inspect", "dataset", "--plot", str(tmp_path / "counts.png"), store=store)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [c["train"] for c in payload["classes"]] == [40, 18, 8, 4]
    assert [c["group"] for c in payload["classes"]] == ["medium", "few", "few", "few"]
    assert all(c["test"] == 10 and c["val"] == 5 for c in payload["classes"])
    assert payload["val_origin"] == "generated, like the training images"
    with Image.open(tmp_path / "counts.png") as image:
        assert image.size == (800, 400)
    table = invoke("inspect", "dataset", store=store)
    assert "disc" in table.stdout and "medium" in table.stdout and "validation: generated" in table.stdout


def test_inspect_kl_divergence_and_tsne(tiny_recipe_path, tmp_path):
    from PIL import Image

    store = tmp_path / "store"
    missing = invoke("inspect", "kl-divergence", store=store)
    assert missing.exit_code == 2 and "no stg artifact" in missing.stderr
    made = runner.invoke(app, ["--store", str(store), "run", str(tiny_recipe_path), "--until", "fit-stg"])
    assert made.exit_code == 0, made.output
    result = invoke("--json", "inspect", "kl-divergence", "--samples", "3", "--csv", str(tmp_path / "kl.csv"), store=store)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["class"] == 3 and len(payload["rows"]) == 3  # the rarest class of the tiny set
    matrix = [[row[f"kl_to_{j + 1}"] for j in range(3)] for row in payload["rows"]]
    assert all(matrix[i][i] == 0 for i in range(3)) and all(v >= 0 for r in matrix for v in r)
    assert len((tmp_path / "kl.csv").read_text().strip().splitlines()) == 4
    again = invoke("--json", "inspect", "kl-divergence", "--samples", "3", store=store)
    assert json.loads(again.stdout)["rows"] == payload["rows"]
    assert len(Store(store).list("kl-report")) == 1
    head = invoke("inspect", "kl-divergence", "--class", "disc", store=store)
    assert head.exit_code == 2 and "head class" in head.stderr
    picture = invoke("inspect", "tsne", "--out", str(tmp_path / "t.png"), "--width", "400", "--height", "300", store=store)
    assert picture.exit_code == 0, picture.output
    with Image.open(tmp_path / "t.png") as image:
        assert image.size == (400, 300)


def test_eval_compare_three_methods_table_json_markdown(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    assert runner.invoke(app, ["--store", str(store), "run", str(tiny_recipe_path), "--until", "pretrain"]).exit_code == 0
    for name, flags in (("ce", ["--classifier", "none"]), ("crt", []), ("noise", ["--augmenter", "noise", "--std", "0.5"])):
        made = invoke("retrain", "--recipe", str(tiny_recipe_path), *flags, "--name", name, store=store)
        assert made.exit_code == 0, made.output
    compare = ["--compare", "ce", "--compare", "crt", "--compare", "noise"]
    table = invoke("eval", *compare, store=store)
    assert table.exit_code == 0 and "CE (stage 1) (ce)" in table.stdout and "cRT+Noise (noise)" in table.stdout
    rows = json.loads(invoke("--json", "eval", *compare, store=store).stdout)["rows"]
    assert [row["method"] for row in rows] == ["CE (stage 1) (ce)", "cRT (crt)", "cRT+Noise (noise)"]
    assert all(0 <= row["all"] <= 1 and row["ece"] is not None for row in rows)
    markdown = invoke("eval", *compare, "--markdown", store=store).stdout.strip().splitlines()
    assert markdown[0].startswith("| Method | All |") and len(markdown) == 5
    assert len(Store(store).list("report")) == 3


def test_unconverged_retrain_warns_on_stderr_and_records_it(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    assert runner.invoke(app, ["--store", str(store), "run", str(tiny_recipe_path), "--until", "pretrain"]).exit_code == 0
    result = invoke("retrain", "--recipe", str(tiny_recipe_path), "--lr", "1e-7", "--epochs", "1", "--name", "cold", store=store)
    assert result.exit_code == 0, result.output
    assert "did not converge" in result.stderr and "did not converge" not in result.stdout
    classifier = Store(store).get(Store(store).resolve("cold", "classifier"))
    assert classifier.metrics["converged"] == 0.0
    assert any("did not converge" in note for note in classifier.meta["notes"])


def test_a_note_repeated_in_one_invocation_is_said_once(capsys):
    from ltstg.terminal import RichProgress

    report = RichProgress(True)
    for message in ("reused stg abc", "reused stg abc", "report: the test split is not balanced"):
        report.note(message)
    err = capsys.readouterr().err
    assert err.count("reused stg abc") == 1 and err.count("not balanced") == 1


def test_run_selects_on_validation_from_a_set_flag_and_shows_the_choice(tiny_recipe_path, tmp_path):
    """`--set methods.NAME.select=...` adds candidates; the table and the JSON say what each seed chose."""
    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + "methods:\n  noise: {augment: {name: noise}}\n")
    store = tmp_path / "store"
    args = ["run", str(tiny_recipe_path), "--set", "methods.noise.select={augment.std: [0.1, 2.0]}", "--seeds", "0",
            "--seeds", "1", "--vary-from", "retrain"]
    result = invoke("--json", *args, store=store)
    assert result.exit_code == 0, result.output
    row = json.loads(result.stdout)["rows"][0]
    assert len(row["chosen"]) == 2 and all(set(choice) == {"augment.std"} for choice in row["chosen"])
    assert [len(seed) for seed in row["candidates"]] == [2, 2]
    table = runner.invoke(app, ["--store", str(store), *args])  # not a terminal: the table at its full width
    assert "Chosen on val" in table.stdout and "ECE (T)" in table.stdout
    # a two-value grid: every choice is on its edge, and the table says which one
    edge = {"0.1": "lowest", "2.0": "highest"}
    assert " / ".join(f"std={c['augment.std']} ({edge[str(c['augment.std'])]})" for c in row["chosen"]) in table.stdout


def test_a_table_sent_to_a_file_keeps_every_cell_whole(tiny_recipe_path, tmp_path):
    """`ltstg run … > results.txt` (issue 32): rich drew tables for a file 80 columns wide (or $COLUMNS) and cut
    the cells that did not fit ("Chos…", "lr=0…", NLL "0.2…"); a file gets the table at its full width."""
    from ltstg import tables

    tiny_recipe_path.write_text(tiny_recipe_path.read_text() + "methods:\n  CE: {classifier: none}\n"
                                "  noise: {augment: {name: noise}, select: {augment.std: [0.1, 2.0]}}\n")
    store = tmp_path / "store"
    args = ["run", str(tiny_recipe_path), "--seeds", "0", "--seeds", "1", "--vary-from", "retrain"]
    with open(tmp_path / "results.txt", "w") as out:
        done = subprocess.run([sys.executable, "-m", "ltstg", "--store", str(store), *args], stdout=out,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "80"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = (tmp_path / "results.txt").read_text()
    rows = json.loads(invoke("--json", *args, store=store).stdout)["rows"]  # every artifact reused
    cells = tables.for_terminal(tables.methods_cells(rows))
    assert len(cells.header) >= 10 and max(map(len, printed.splitlines())) > 80
    for cell in [*cells.header, *(cell for line in cells.body for cell in line)]:
        assert cell in printed, cell
    assert "…" not in printed


def test_retrain_with_bn_shift_makes_the_shifted_features_and_trains_on_them(tiny_recipe_path, tmp_path):
    store = tmp_path / "store"
    assert runner.invoke(app, ["--store", str(store), "run", str(tiny_recipe_path), "--until", "pretrain"]).exit_code == 0
    flags = ["--classifier", "mislas", "--optimizer", "sgd", "--lr", "0.1", "--sampling", "class_aware",
             "--schedule-step", "epoch", "--bn-shift"]
    made = invoke("--json", "retrain", "--recipe", str(tiny_recipe_path), *flags, "--name", "shifted", store=store)
    assert made.exit_code == 0, made.output
    kinds = [a["kind"] for a in json.loads(made.stdout)["artifacts"]]
    assert kinds == ["features", "classifier"]
    classifier = Store(store).get(Store(store).resolve("shifted", "classifier"))
    features = Store(store).get(classifier.parents[0])
    assert features.info["bn_shift"]["batch_size"] == 16 and classifier.settings["bn_shift"] is True
    assert classifier.settings["optimizer"] == "sgd" and classifier.settings["schedule_step"] == "epoch"
    assert "bn_shift" not in Store(store).find(None, "features").info  # the newest features are the plain ones
    plain = invoke("retrain", "--recipe", str(tiny_recipe_path), store=store)
    assert plain.exit_code == 0, plain.output
    assert "bn_shift" not in Store(store).get(Store(store).find(None, "classifier").parents[0]).info
    named = invoke("retrain", "--recipe", str(tiny_recipe_path), "--features", features.id[:12], store=store)
    assert named.exit_code == 2 and "were extracted after a BatchNorm shift" in named.stderr  # taken as given: refused


def test_inspect_recipe_prints_the_effective_recipe_with_defaults_and_overrides(tmp_path):
    import yaml

    from tests.conftest import TINY

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY + "methods:\n  cRT+STG: {augment: {name: stg}, select: {augment.lam: [0.5, 1.0]}}\n")
    result = runner.invoke(app, ["--json", "inspect", "recipe", str(recipe), "--set", "stg.memory=8"])
    assert result.exit_code == 0, result.output
    effective = json.loads(result.stdout)
    assert effective["stg"]["memory"] == 8 and effective["pretrain"]["epochs"] == 2  # the override; the file
    assert effective["pretrain"]["momentum"] == 0.9  # a default the file never names
    method = effective["methods"]["cRT+STG"]
    assert method["augment"]["name"] == "stg" and method["lr"] == effective["retrain"]["lr"]  # filled from retrain
    assert method["select"] == {"augment.lam": [0.5, 1.0]}
    as_yaml = runner.invoke(app, ["inspect", "recipe", str(recipe), "--set", "stg.memory=8"])
    assert yaml.safe_load(as_yaml.stdout) == effective  # the same recipe, as YAML
    bad = runner.invoke(app, ["inspect", "recipe", str(recipe), "--set", "stg.memry=8"])
    assert bad.exit_code == 2 and "stg.memry" in bad.stderr


BLOCK_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "timm", "numpy", "safetensors", "PIL"):
            raise ImportError(f"{name} imported before a command ran")

sys.meta_path.insert(0, NoTorch())
sys.argv = ["ltstg", *sys.argv[1:]]
from ltstg.cli import main
main()
"""


@pytest.mark.parametrize("args, code, said", [
    (["--help"], 0, "Long-tailed image classification"),
    (["run", "--help"], 0, "Whole recipes"),
    (["pretrain", "--bogus"], 2, "No such option"),
    (["pretrain", "--epochs", "-3"], 2, "pretrain.epochs: Input should be greater than or equal to 1"),
    (["run", "recipes/synthetic-lt.yaml", "--set", "stg.lr=-1"], 2, "stg.lr: Input should be greater than 0"),
    (["retrain", "--augmenter", "stg", "--lam", "-1"], 2, "lam"),
])
def test_help_a_bad_flag_and_a_bad_recipe_field_are_answered_without_importing_torch(args, code, said):
    """Issue 36: torch's import alone takes seconds; a typo is answered before it (benchmarks/startup.py times it)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", BLOCK_TORCH, *args], capture_output=True, text=True, cwd=root,
                          timeout=120)
    assert done.returncode == code, done.stdout[-2000:] + done.stderr[-2000:]
    assert said in done.stdout + done.stderr and "imported before a command ran" not in done.stderr
