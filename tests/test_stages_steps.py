import pytest
import torch
from safetensors.torch import save_file

from ltstg.data.inputs import FILE_INPUTS_REVISION
from ltstg.errors import LtstgError
from ltstg.recipe import RetrainSettings, StgAugment, load_recipe
from ltstg.stages import Context, steps
from ltstg.stages.pretrain import resolve_precision
from ltstg.store import Artifact, Store


def test_stg_fitted_on_other_features_is_refused(tiny_run):
    recipe, ctx, features = tiny_run["recipe"], tiny_run["ctx"], tiny_run["features"]
    stg = steps.fit_stg_step(ctx, recipe, features).artifact
    other = Artifact("0" * 64, {**features.meta, "id": "0" * 64}, features.tensors)
    with pytest.raises(LtstgError, match="was fitted on features"):
        steps.retrain_step(ctx, recipe, RetrainSettings(augment=StgAugment()), other, stg)
    with pytest.raises(LtstgError, match="needs an STG artifact"):
        steps.retrain_step(ctx, recipe, RetrainSettings(augment=StgAugment()), features, None)


def test_an_imbalance_that_empties_a_class_is_an_error(tmp_path, tiny_recipe_path):
    recipe = load_recipe(tiny_recipe_path, {"dataset.imbalance": 1000})
    with pytest.raises(LtstgError, match="leaves class 2 without images; the largest this source allows is 40"):
        steps.dataset_step(Context(store=Store(tmp_path / "s")), recipe)
    assert [p for p in (tmp_path / "s").rglob("*") if p.is_file()] == []  # empty folders at most


def test_init_weights_enter_the_id_by_content_not_by_path(tmp_path, tiny_run, tiny_recipe_path, monkeypatch):
    from ltstg.stages import stage_id

    captured = []
    monkeypatch.setattr(steps, "run_stage", lambda ctx, kind, defining, *a, **k: captured.append(defining))
    state = {k: v.clone() for k, v in tiny_run["backbone"].tensors.items() if k.startswith("model.")}
    weights = {k[len("model."):]: v for k, v in state.items()}
    first, moved = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file(weights, str(first))
    save_file(weights, str(moved))
    for path in (first, moved):
        steps.pretrain_step(tiny_run["ctx"], load_recipe(tiny_recipe_path, {"pretrain.init_weights": str(path)}), tiny_run["dataset"])
    weights["fc.bias"] = weights["fc.bias"] + 1
    save_file(weights, str(first))
    steps.pretrain_step(tiny_run["ctx"], load_recipe(tiny_recipe_path, {"pretrain.init_weights": str(first)}), tiny_run["dataset"])
    assert "init_weights" not in captured[0]
    assert captured[0] == captured[1] != captured[2]
    assert captured[0]["precision"] == resolve_precision("auto", torch.device("cpu"))
    paths = Artifact(tiny_run["dataset"].id, {**tiny_run["dataset"].meta,
                     "info": {**tiny_run["dataset"].info, "storage": "paths"}}, tiny_run["dataset"].tensors)
    steps.pretrain_step(tiny_run["ctx"], load_recipe(tiny_recipe_path), paths)
    steps.pretrain_step(tiny_run["ctx"], load_recipe(tiny_recipe_path), tiny_run["dataset"])
    assert captured[-2]["file_inputs"] == FILE_INPUTS_REVISION and "file_inputs" not in captured[-1]
    with pytest.raises(LtstgError, match="cannot read weights file"):
        steps.pretrain_step(tiny_run["ctx"], load_recipe(tiny_recipe_path, {"pretrain.init_weights": str(tmp_path / "no")}), tiny_run["dataset"])


def test_hub_init_weights_enter_the_id_as_the_same_local_file_would(tmp_path, tiny_run, tiny_recipe_path, monkeypatch):
    from huggingface_hub import constants

    captured = []
    monkeypatch.setattr(steps, "run_stage", lambda ctx, kind, defining, *a, **k: captured.append(defining))
    weights = {k[len("model."):]: v.clone() for k, v in tiny_run["backbone"].tensors.items() if k.startswith("model.")}
    local = tmp_path / "local.safetensors"
    save_file(weights, str(local))
    snapshot = tmp_path / "hub" / "models--acme--tiny" / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    save_file(weights, str(snapshot / "model.safetensors"))
    (tmp_path / "hub" / "models--acme--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for spec in (str(local), "hf-hub:acme/tiny"):
        steps.pretrain_step(tiny_run["ctx"], load_recipe(tiny_recipe_path, {"pretrain.init_weights": spec}), tiny_run["dataset"])
    assert captured[0] == captured[1] and "init_weights_sha256" in captured[0]
    with pytest.raises(LtstgError, match="HF_HUB_OFFLINE"):
        steps.pretrain_step(tiny_run["ctx"], load_recipe(tiny_recipe_path, {"pretrain.init_weights": "hf-hub:acme/none"}),
                            tiny_run["dataset"])
