"""The augmenter package as a whole: every module registers one augmenter with one interface."""
import typing

import pytest
import torch

from ltstg.augment.stg import StgAugmenter
from ltstg.data.features import TrainingFeatures
from ltstg.methods import augmenters, get_augmenter

COUNTS = torch.tensor([50, 5])
INPUTS = TrainingFeatures(torch.zeros(2, 4), torch.tensor([0, 1]), None, COUNTS, torch.zeros(2, 4), torch.zeros(2))


def test_every_module_registers_its_augmenter_in_choice_order():
    original = ["none", "stg", "isda", "noise", "dropout"]
    assert list(augmenters())[:5] == original  # the original five first, as the recipe listed them; newer ones follow
    for name, entry in augmenters().items():
        assert typing.get_args(entry.settings.model_fields["name"].annotation) == (name,)
        assert entry.no_op is None or entry.no_op in entry.settings.model_fields
    assert [augmenters()[name].label for name in original] == ["", "STG", "ISDA", "Noise", "Dropout"]


def test_recipe_augment_union_names_the_registry_keys():
    from ltstg.recipe import Augment

    union = typing.get_args(typing.get_args(Augment)[0])
    names = [typing.get_args(member.model_fields["name"].annotation)[0] for member in union]
    assert names == list(augmenters())


def _build(name):
    if name == "stg":
        return StgAugmenter(
            lambda features, token: (torch.ones_like(features), torch.ones_like(features)),
            torch.ones(1, 4), torch.tensor([0]), COUNTS,
        )
    entry = get_augmenter(name)
    return entry.build(entry.settings(), INPUTS, None, torch.device("cpu"))


@pytest.mark.parametrize("name", list(augmenters()))
def test_every_augmenter_returns_new_tensor_and_leaves_input(name):
    features = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    before, labels_before = features.clone(), labels.clone()
    out = _build(name).augment(features, labels, generator=torch.Generator().manual_seed(1))
    assert out.shape == features.shape
    assert out.data_ptr() != features.data_ptr()
    assert torch.equal(features, before) and torch.equal(labels, labels_before)
