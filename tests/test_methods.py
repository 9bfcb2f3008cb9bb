"""The method registries: names, errors, and the recipe models built from them."""
import typing

import pytest
import torch
from pydantic import Field

from ltstg import methods
from ltstg.errors import LtstgError
from ltstg.methods import Settings, augmenters, classifiers, get_augmenter, get_classifier
from ltstg.recipe import Augment, RetrainSettings, augment_union, id_settings, retrain_settings_model


@pytest.fixture
def scratch_registries(monkeypatch):
    """Registries a test may add to; the real ones come back afterwards."""
    augmenters(), classifiers()  # import every method first, so the copies hold them all
    monkeypatch.setattr(methods, "_AUGMENTERS", dict(methods._AUGMENTERS))
    monkeypatch.setattr(methods, "_CLASSIFIERS", dict(methods._CLASSIFIERS))


def test_unknown_names_list_the_known_ones():
    with pytest.raises(LtstgError, match=r"unknown augmenter 'stgg'; known augmenters: none, stg, isda, noise, dropout"):
        get_augmenter("stgg")
    with pytest.raises(LtstgError) as error:
        get_classifier("crtt")
    assert str(error.value).startswith("unknown classifier 'crtt'; known classifiers: crt, lws, mislas, tau-norm, none")
    for name in classifiers():
        assert name in str(error.value)


def test_the_recipe_models_come_from_the_registries():
    union = typing.get_args(typing.get_args(Augment)[0])
    assert list(union) == [entry.settings for entry in augmenters().values()]
    assert typing.get_args(RetrainSettings.model_fields["classifier"].annotation) == tuple(classifiers())
    assert RetrainSettings.model_fields["augment"].default == get_augmenter("none").settings()
    for entry in classifiers().values():
        for field, info in entry.settings.model_fields.items():
            merged = RetrainSettings.model_fields[field]
            assert (merged.annotation, merged.default, merged.description) == (info.annotation, info.default, info.description)


def test_the_five_original_classifiers_keep_their_fields_in_every_id():
    """Ids made before the registries hold tau, smooth_* and lr_factor whatever the classifier."""
    for name in ("crt", "lws", "mislas", "tau-norm", "none"):
        assert {"tau", "smooth_head", "smooth_tail", "smooth_shape", "lr_factor"} <= set(
            id_settings(RetrainSettings(classifier=name))
        )


def test_a_new_augmenter_joins_the_union_and_leaves_again(scratch_registries):
    class ToyAugment(Settings):
        name: typing.Literal["toy"] = "toy"
        scale: float = Field(2.0, gt=0)

    @methods.register_augmenter(ToyAugment, label="Toy", no_op=None)
    def build(settings, inputs, stg, device):
        return None

    assert list(augmenters())[-1] == "toy" and get_augmenter("toy").build is build
    settings = retrain_settings_model().model_validate({"augment": {"name": "toy", "scale": 3}})
    assert settings.augment == ToyAugment(scale=3)
    assert ToyAugment in typing.get_args(typing.get_args(augment_union())[0])
    with pytest.raises(ValueError, match="registered twice"):
        methods.register_augmenter(ToyAugment, label="Toy")(build)


def test_after_the_toy_test_the_registry_is_as_before():
    assert "toy" not in augmenters()
    with pytest.raises(Exception):
        RetrainSettings.model_validate({"augment": {"name": "toy"}})


def test_a_new_classifiers_field_enters_only_its_own_ids(scratch_registries):
    class ToySettings(Settings):
        toy_strength: float = Field(1.0, ge=0, description="toy: how much")

    @methods.register_classifier(ToySettings, name="toy", label="Toy", post_hoc=True)
    def toy(settings, inputs):
        return inputs.weight, inputs.bias

    model = retrain_settings_model()
    assert typing.get_args(model.model_fields["classifier"].annotation)[-1] == "toy"
    assert "toy_strength" in model().model_dump()  # every dump holds it, so recipes can set it for any method
    assert "toy_strength" not in id_settings(model())  # but a cRT id does not change with it
    assert id_settings(model(classifier="toy", toy_strength=2.0))["toy_strength"] == 2.0
    assert id_settings(model()) == id_settings(RetrainSettings())  # older ids stay as they were


def test_bad_registrations_fail_at_import_time(scratch_registries):
    class Nameless(Settings):
        lam: float = 1.0

    with pytest.raises(TypeError, match="name"):
        methods.register_augmenter(Nameless, label="x")

    class Clash(Settings):
        tau: float = 2.0

    methods.register_classifier(Clash, name="clash", label="Clash", post_hoc=True)(lambda settings, inputs: None)
    with pytest.raises(TypeError, match="'tau' is already a retrain field"):
        retrain_settings_model()
    with pytest.raises(TypeError, match="auto_init"):
        methods.register_classifier(Clash, name="x", label="x", inits=("stage1",), auto_init="fresh")


def test_every_trained_classifier_folds_into_one_linear_classifier():
    from ltstg.data.features import TrainingFeatures

    weight, bias = torch.randn(3, 4), torch.randn(3)
    inputs = TrainingFeatures(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 0]), None, torch.tensor([3, 1, 1]), weight, bias)
    features = torch.randn(7, 4)
    for name, entry in classifiers().items():
        if entry.trainable:
            model = entry.build(RetrainSettings(classifier=name), inputs, 0, entry.auto_init)
            folded_weight, folded_bias = model.folded()
            assert torch.allclose(model(features), features @ folded_weight.T + folded_bias, atol=1e-6), name
