"""Stage-3 methods as registries, the way timm registers models: one decorator per kind files a method
under its name with its settings model, its builder and its checks.

A method is one module in `ltstg/augment/` or `ltstg/classifiers/`; the recipe's settings models, the
retrain loop and its input checks all read these registries, so adding a method touches that module
(and its test) only. No torch here: recipe.py imports this module, and torch types appear in
annotations only. A method module imports torch inside the functions that compute (its builder, its
augmenter's methods), never at its top: every method module is imported to load a recipe, and the CLI
answers `--help` and a bad recipe field without torch (tests/test_cli.py holds it).
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ltstg.errors import LtstgError

if TYPE_CHECKING:
    import torch
    from torch import nn

# `inputs` below is an ltstg.data.features.TrainingFeatures, `features` and `stg` are store Artifacts: this
# bottom layer names them only in words, so that nothing here imports upwards (not even for type checking)
_TrainingFeatures = Any
_Artifact = Any

PLAIN = "none"  # the augmenter that changes nothing: the default, and the only one a post-hoc classifier takes
PACKAGES = {"augmenter": "ltstg.augment", "classifier": "ltstg.classifiers"}  # where each kind's modules live
Builder = TypeVar("Builder", bound=Callable[..., Any])


class Settings(BaseModel):
    """Base of every settings model (recipe.py's and the methods'): a misspelt key is an error, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)  # inf and NaN are no setting

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, data: Any) -> Any:
        """pydantic reads `true` as 1 for a number; in a recipe that is a slip, not a count."""
        for name, value in data.items() if isinstance(data, dict) else ():
            field = cls.model_fields.get(name)
            if isinstance(value, bool) and field is not None and field.annotation in (int, float):
                raise ValueError(f"{name}: a number is needed here, not {str(value).lower()}")
        return data


def since_ids(default: Any, *, only_with: dict[str, Any] | None = None, **kwargs: Any) -> Any:
    """A field added after ids were published: at its default it is left out of ids, so they stay valid. With
    `only_with` it joins an id exactly when those fields have those values (momentum with sgd), which no id
    made before it had."""
    extra: dict[str, Any] = {"since_ids": True, **({"only_with": only_with} if only_with else {})}
    return Field(default, json_schema_extra=extra, **kwargs)


def scope_field(default: str) -> Any:
    """`augment.scope`: which classes' samples an augmenter changes, so that augmenters can be compared on the
    same classes (the STG changes tail samples only; noise, dropout and ISDA, as their authors ran them, all)."""
    return since_ids(default, description="tail: only the samples of the STG's tail classes (its head/tail split; "
                     "needs an STG artifact); all: every sample")


def uses_stg(augment: Any) -> bool:
    """Whether an augmenter needs an STG artifact: the STG itself, or any augmenter kept to the STG's tail."""
    return augment.name == "stg" or getattr(augment, "scope", "all") == "tail"


class Augmenter(Protocol):
    """What retrain relies on: a fresh (B, D) tensor from a batch, every draw from `generator`."""

    def augment(self, features: torch.Tensor, labels: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        ...


Checks = Callable[[Any, _Artifact, Any], list[str]]  # (retrain settings, features, stg) -> problems


@dataclass(frozen=True)
class AugmenterEntry:
    """One registered feature augmenter; its name is the `name` Literal of its settings model."""

    name: str
    settings: type[Settings]  # a member of the recipe's `retrain.augment` union
    build: Callable[[Any, _TrainingFeatures, _Artifact | None, torch.device], Augmenter]  # (its settings, ...)
    label: str  # what comparison tables append to the classifier's label ("" for none)
    no_op: str | None = None  # the field at which it changes no sample (0 is refused before training)
    checks: Checks | None = None
    outputs: Callable[[Any, _TrainingFeatures], dict[str, torch.Tensor]] | None = None  # extra tensors after training
    position: float = math.inf  # place in choices and error messages; later methods follow by name


@dataclass(frozen=True)
class ClassifierEntry:
    """One registered stage-3 classifier: trained (`build`) or post-hoc (`post_hoc`), never both.

    Its settings model's fields sit flat in `retrain` (`retrain.tau`, not `retrain.tau_norm.tau`).
    A trained classifier's module folds into one linear classifier: `model.folded() -> (weight, bias)`.
    """

    name: str
    label: str
    settings: type[Settings]
    build: Callable[[Any, _TrainingFeatures, int, str], nn.Module] | None = None  # (settings, inputs, seed, init)
    post_hoc: Callable[[Any, _TrainingFeatures], tuple[torch.Tensor, torch.Tensor]] | None = None  # on the CPU
    inits: tuple[str, ...] = ("stage1",)  # the `retrain.init` values it accepts besides auto
    auto_init: str = "stage1"  # what `init: auto` means for it
    parameter_groups: Callable[[Any, Any], Any] | None = None  # (model, settings); default: one lr for all
    smoothing: Callable[[Any, _TrainingFeatures], torch.Tensor] | None = None  # per-class ε (C,); default: none
    checks: Checks | None = None
    # backwards compatibility: ids made before classifiers had their own fields hold tau, smooth_* and
    # lr_factor whatever the classifier; those fields stay in every id, a newer method's only in its own
    in_every_id: bool = False
    position: float = math.inf

    @property
    def trainable(self) -> bool:
        return self.build is not None


_AUGMENTERS: dict[str, AugmenterEntry] = {}
_CLASSIFIERS: dict[str, ClassifierEntry] = {}


def _settings_name(settings_model: type[Settings]) -> str:
    field = settings_model.model_fields.get("name")
    names = get_args(field.annotation) if field is not None else ()
    if len(names) != 1 or field.default != names[0]:
        raise TypeError(f"{settings_model.__name__} needs `name: Literal['x'] = 'x'`, the recipe's augment tag")
    return names[0]


def register_augmenter(
    settings_model: type[Settings],
    *,
    label: str,
    no_op: str | None = None,
    checks: Checks | None = None,
    outputs: Callable[[Any, _TrainingFeatures], dict[str, torch.Tensor]] | None = None,
    position: float = math.inf,
) -> Callable[[Builder], Builder]:
    """Decorate an augmenter's builder `(its settings, inputs, stg, device) -> augmenter` to register it."""
    name = _settings_name(settings_model)
    if no_op is not None and no_op not in settings_model.model_fields:
        raise TypeError(f"augmenter {name!r}: no_op {no_op!r} is not a field of {settings_model.__name__}")

    def register(build: Builder) -> Builder:
        if name in _AUGMENTERS:
            raise ValueError(f"augmenter {name!r} is registered twice")
        _AUGMENTERS[name] = AugmenterEntry(name, settings_model, build, label, no_op, checks, outputs, position)
        return build

    return register


def register_classifier(
    settings_model: type[Settings],
    *,
    name: str,
    label: str,
    post_hoc: bool = False,
    inits: tuple[str, ...] = ("stage1",),
    auto_init: str = "stage1",
    parameter_groups: Callable[[Any, Any], Any] | None = None,
    smoothing: Callable[[Any, _TrainingFeatures], torch.Tensor] | None = None,
    checks: Checks | None = None,
    in_every_id: bool = False,
    position: float = math.inf,
) -> Callable[[Builder], Builder]:
    """Decorate a classifier's builder `(settings, inputs, seed, init) -> module with folded()` or, with
    `post_hoc=True`, its `(settings, inputs) -> (weight, bias)` to register it."""
    if "name" in settings_model.model_fields:
        raise TypeError(f"classifier {name!r}: its fields sit flat in `retrain`, where `name` would mean nothing")
    if auto_init not in inits:
        raise TypeError(f"classifier {name!r}: auto_init {auto_init!r} is not one of its inits {inits}")
    if post_hoc and (parameter_groups is not None or smoothing is not None or inits != ("stage1",)):
        raise TypeError(f"classifier {name!r} is post-hoc: it trains nothing and starts from stage 1")

    def register(function: Builder) -> Builder:
        if name in _CLASSIFIERS:
            raise ValueError(f"classifier {name!r} is registered twice")
        _CLASSIFIERS[name] = ClassifierEntry(
            name, label, settings_model,
            build=None if post_hoc else function, post_hoc=function if post_hoc else None,
            inits=inits, auto_init=auto_init, parameter_groups=parameter_groups, smoothing=smoothing,
            checks=checks, in_every_id=in_every_id, position=position,
        )
        return function

    return register


def _ordered(registry: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(registry.items(), key=lambda item: (item[1].position, item[0])))


def augmenters() -> dict[str, AugmenterEntry]:
    """Every registered augmenter, in choice order; importing the package registers its modules."""
    importlib.import_module(PACKAGES["augmenter"])
    return _ordered(_AUGMENTERS)


def classifiers() -> dict[str, ClassifierEntry]:
    """Every registered classifier, in choice order; importing the package registers its modules."""
    importlib.import_module(PACKAGES["classifier"])
    return _ordered(_CLASSIFIERS)


def _known(kind: str, registry: dict[str, Any], name: str) -> Any:
    if name not in registry:
        raise LtstgError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(registry)}.")
    return registry[name]


def get_augmenter(name: str) -> AugmenterEntry:
    """Look an augmenter up by its recipe name, so a typo fails with the list of valid ones."""
    return _known("augmenter", augmenters(), name)


def get_classifier(name: str) -> ClassifierEntry:
    """Look a classifier up by its recipe name, so a typo fails with the list of valid ones."""
    return _known("classifier", classifiers(), name)


def either(names: list[str]) -> str:
    """`a, b or c`, for messages that name the choices."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
