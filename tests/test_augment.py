import typing

import pytest
import torch

from ltstg.augment import AUGMENTERS, AugmenterName, StgAugmenter, get_augmenter
from ltstg.errors import LtstgError


def test_literal_matches_registry():
    assert list(typing.get_args(AugmenterName)) == list(AUGMENTERS)


def test_recipe_augment_union_names_the_registry_keys():
    from ltstg.recipe import Augment

    union = typing.get_args(typing.get_args(Augment)[0])
    names = [typing.get_args(member.model_fields["name"].annotation)[0] for member in union]
    assert names == list(AUGMENTERS)


def test_get_augmenter_finds_class():
    assert get_augmenter("stg") is StgAugmenter


def test_unknown_name_lists_known_names():
    with pytest.raises(LtstgError) as error:
        get_augmenter("stgg")
    for name in AUGMENTERS:
        assert name in str(error.value)


def _build(name):
    counts = torch.tensor([50, 5])
    if name == "stg":
        return StgAugmenter(
            lambda features, token: (torch.ones_like(features), torch.ones_like(features)),
            torch.ones(1, 4), torch.tensor([0]), counts,
        )
    arguments = {"none": (), "isda": (2, 4), "noise": (1.0,), "dropout": (0.5,)}[name]
    return AUGMENTERS[name](*arguments)


@pytest.mark.parametrize("name", list(AUGMENTERS))
def test_every_augmenter_returns_new_tensor_and_leaves_input(name):
    features = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    before, labels_before = features.clone(), labels.clone()
    out = _build(name).augment(features, labels, generator=torch.Generator().manual_seed(1))
    assert out.shape == features.shape
    assert out.data_ptr() != features.data_ptr()
    assert torch.equal(features, before) and torch.equal(labels, labels_before)
