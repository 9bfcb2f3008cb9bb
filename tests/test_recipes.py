from pathlib import Path

import pytest

from ltstg.methods import PLAIN
from ltstg.recipe import load_recipe, method_base, method_settings

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").rglob("*.yaml"))


def test_there_are_recipes_for_every_data_set():
    names = {str(p.relative_to(p.parents[1])) if p.parent.name != "recipes" else p.name for p in RECIPES}
    assert "synthetic-lt.yaml" in names
    for expected in ("cifar10/im100.yaml", "cifar100/im10.yaml", "imagenet-lt/resnet50.yaml", "places-lt/resnet152.yaml"):
        assert expected in names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_validates(path):
    from ltstg.stages.pipeline import check_run

    recipe = load_recipe(path)
    for method in recipe.methods:
        method_settings(recipe, method)
    check_run(recipe, "eval", None, "fit-stg")  # every base is the same stage 3 but its augmenter; extend is valid


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_augmentation_row_is_read_off_its_own_base(path):
    """An augmenter's effect is its row against the same stage 3 without it (issue 33), so no recipe ships an
    augmented row without a base; check_run (above) holds the base to the identical stage 3 and grids."""
    recipe = load_recipe(path)
    augmented = [name for name in recipe.methods if method_settings(recipe, name).augment.name != PLAIN]
    assert all(method_base(recipe, name) for name in augmented), [n for n in augmented if not method_base(recipe, n)]


def test_paper_cifar_stage1_and_stage3_learning_rates():
    root = Path(__file__).resolve().parents[1] / "recipes"
    c10, c100 = load_recipe(root / "cifar10/im100.yaml"), load_recipe(root / "cifar100/im100.yaml")
    assert c10.pretrain.milestones == [160, 180] and c10.pretrain.epochs == 200 and c10.pretrain.mixup_alpha == 1.0
    assert c10.retrain.lr == 1e-3 and c100.retrain.lr == 1e-4
