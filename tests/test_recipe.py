import pytest

from ltstg.errors import LtstgError
from ltstg.store import canonical_json
from ltstg.recipe import (
    Recipe,
    StgAugment,
    id_settings,
    load_recipe,
    method_settings,
)


def write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_paper_cifar_recipe():
    recipe = load_recipe()
    assert recipe.pretrain.lr == 0.1 and recipe.pretrain.epochs == 200 and recipe.pretrain.milestones == [160, 180]
    assert recipe.pretrain.wd == 2e-4 and recipe.pretrain.mixup_alpha == 1.0 and recipe.stg.lr == 1e-3


def test_unknown_field_names_path_and_file(tmp_path):
    path = write(tmp_path, "stg:\n  memroy: 600\n")
    with pytest.raises(LtstgError) as error:
        load_recipe(path)
    assert str(error.value) == f"{path}: stg.memroy: Extra inputs are not permitted"


def test_every_problem_is_one_line(tmp_path):
    path = write(tmp_path, "stg:\n  memory: -1\ndataset:\n  imbalance: lots\nretrain:\n  augment: {name: stg, t: 1.5}\n")
    with pytest.raises(LtstgError) as error:
        load_recipe(path)
    lines = str(error.value).splitlines()
    assert len(lines) == 3
    assert f"{path}: stg.memory: expected a size >= 0, or auto" in lines
    assert any(line.startswith(f"{path}: dataset.imbalance: Input should be a valid number") for line in lines)
    assert f"{path}: retrain.augment.t: Input should be less than 1" in lines


def test_overlapping_many_and_few_groups_fail_at_load_not_after_training(tmp_path):
    path = write(tmp_path, "dataset:\n  many_above: 100\n  few_below: 200\n")
    with pytest.raises(LtstgError) as error:
        load_recipe(path)
    assert str(error.value) == (f"{path}: dataset: few_below (200) must not exceed many_above + 1 (101): "
                                "a class would be both many and few")
    assert load_recipe(None, {"dataset.few_below": 101}).dataset.few_below == 101


def test_split_list_sources_refuse_a_profile_and_crop_at_224(tmp_path):
    with pytest.raises(LtstgError, match="imagenet-lt takes its class counts from the published split list; "
                                         "remove dataset.imbalance, dataset.profile$"):
        load_recipe(None, {"dataset.source": "imagenet-lt", "dataset.imbalance": 50, "dataset.profile": "step"})
    recipe = load_recipe(None, {"dataset.source": "places-lt"})
    assert recipe.dataset.size == 224 and recipe.dataset.imbalance == 100  # the default: unused, never refused
    assert Recipe.model_validate(recipe.model_dump(mode="json")) == recipe  # a dumped recipe loads back unchanged
    assert load_recipe(None, {"dataset.source": "places-lt", "dataset.size": 160}).dataset.size == 160
    assert load_recipe(None, {"dataset.source": "cifar10"}).dataset.size == 32


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "stg:\n  memory: 600\n  epochs: [1, 2\n")
    with pytest.raises(LtstgError, match=rf"{path}: line \d+"):
        load_recipe(path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(LtstgError, match="cannot read the recipe"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(LtstgError, match="must be a mapping"):
        load_recipe(write(tmp_path, "- 1\n- 2\n"))


def test_overrides_apply_and_validate(tmp_path):
    path = write(tmp_path, "stg:\n  memory: 600\n")
    assert load_recipe(path, {"stg.memory": 1200}).stg.memory == 1200
    assert load_recipe(path, {"stg.memory": None}).stg.memory == 600
    with pytest.raises(LtstgError, match="recipe: stg.memory"):
        load_recipe(None, {"stg.memory": -5})


def test_switching_augmenter_drops_the_old_augmenters_fields(tmp_path):
    path = write(tmp_path, "retrain:\n  augment: {name: noise, std: 0.1}\n")
    recipe = load_recipe(path, {"retrain.augment.name": "stg", "retrain.augment.lam": 1.0})
    assert recipe.retrain.augment == StgAugment(lam=1.0)
    same = load_recipe(path, {"retrain.augment.name": "noise"})
    assert same.retrain.augment.std == 0.1


def test_id_settings_drop_run_options_only():
    recipe = Recipe.model_validate({"dataset": {"root": "/somewhere", "download": True}, "pretrain": {"workers": 9}})
    ids = id_settings(recipe)
    assert "root" not in ids["dataset"] and "download" not in ids["dataset"] and "workers" not in ids["pretrain"]
    assert ids["dataset"]["imbalance"] == 100 and ids["pretrain"]["epochs"] == 200
    assert canonical_json(id_settings(Recipe())) == canonical_json(ids)


def test_methods_validate_and_merge(tmp_path):
    path = write(tmp_path, "methods:\n  stg: {augment: {name: stg, lam: 1.0}}\n  bad: {augment: {name: noise, p: 0.3}}\n")
    with pytest.raises(LtstgError, match=r"methods\.bad\.augment\.p: Extra inputs are not permitted"):
        load_recipe(path)
    good = load_recipe(write(tmp_path, "retrain: {lr: 0.01}\nmethods:\n  stg: {augment: {name: stg, lam: 1.0}}\n"))
    settings = method_settings(good, "stg")
    assert settings.augment == StgAugment(lam=1.0) and settings.lr == 0.01
    with pytest.raises(LtstgError, match="unknown method 'nope'"):
        method_settings(good, "nope")


def test_an_artifact_records_only_the_chosen_classifiers_own_fields():
    from ltstg.recipe import RetrainSettings, chosen_settings

    crt = chosen_settings(RetrainSettings(classifier="crt"))
    adjusted = chosen_settings(RetrainSettings(classifier="logit-adjust"))
    assert "la_tau" not in crt and adjusted["la_tau"] == 1.0
    assert crt["tau"] == 1.0 and crt["lr_factor"] == 0.1  # older fields stay, as in every id
    unused = ("la_tau", "momentum", "samples_per_class")  # logit-adjust's, sgd's and class-aware sampling's
    assert crt == {k: v for k, v in RetrainSettings(classifier="crt").model_dump(mode="json").items() if k not in unused}
    sgd = chosen_settings(RetrainSettings(optimizer="sgd", sampling="class_aware"))
    assert sgd["momentum"] == 0.9 and sgd["samples_per_class"] == 4


def test_fields_added_after_ids_were_published_leave_old_ids_alone_at_their_defaults():
    from ltstg.recipe import RetrainSettings, id_settings

    plain = id_settings(RetrainSettings())
    assert not {"optimizer", "momentum", "schedule_step", "samples_per_class", "bn_shift"} & set(plain)
    assert id_settings(RetrainSettings(momentum=0.5)) == plain  # momentum means nothing to adam
    sgd = id_settings(RetrainSettings(optimizer="sgd"))
    assert sgd["optimizer"] == "sgd" and sgd["momentum"] == 0.9  # set: it joins the id, with what it brings
    assert id_settings(RetrainSettings(optimizer="sgd", momentum=0.5)) != sgd
    aware = id_settings(RetrainSettings(sampling="class_aware"))
    assert aware["samples_per_class"] == 4 and "samples_per_class" not in id_settings(RetrainSettings(samples_per_class=2))
    assert id_settings(RetrainSettings(schedule_step="epoch"))["schedule_step"] == "epoch"
    assert id_settings(RetrainSettings(bn_shift=True))["bn_shift"] is True


def test_retrain_with_a_method_and_flags_is_the_run_method_with_the_flags(tmp_path):
    from ltstg.recipe import method_settings

    path = write(tmp_path, "retrain: {epochs: 4}\nmethods:\n  STG: {augment: {name: stg, lam: 1.0}}\n  CE: {classifier: none}\n")
    loaded = load_recipe(path, {"retrain.augment.t": 0.25, "retrain.lr": 0.01}, method="STG")
    by_run = method_settings(load_recipe(path), "STG")
    assert loaded.retrain == by_run.model_copy(update={"augment": by_run.augment.model_copy(update={"t": 0.25}),
                                                       "lr": 0.01})
    assert load_recipe(path, method="CE").retrain == method_settings(load_recipe(path), "CE")
    with pytest.raises(LtstgError, match="unknown method 'cE'; the recipe lists: CE, STG"):
        load_recipe(path, method="cE")


def test_a_method_can_build_on_another_with_a_yaml_merge(tmp_path):
    from ltstg.recipe import method_candidates

    path = write(tmp_path, "methods:\n  MiSLAS: &mislas {classifier: mislas, optimizer: sgd, lr: 0.1}\n"
                           "  MiSLAS (lr on val): {<<: *mislas, lr: 0.2, select: {wd: [0.0, 2.0e-4]}}\n")
    candidates = method_candidates(load_recipe(path), "MiSLAS (lr on val)")
    assert [(values, s.optimizer, s.lr, s.wd) for values, s in candidates] == [
        ({"wd": 0.0}, "sgd", 0.2, 0.0), ({"wd": 2e-4}, "sgd", 0.2, 2e-4)]  # the key beside the merge wins
    twice = write(tmp_path, "methods:\n  A: &a {lr: 0.1}\n  B: {<<: *a, lr: 0.2, lr: 0.3}\n")
    with pytest.raises(LtstgError, match="key 'lr' is given twice"):
        load_recipe(twice)
