"""The stage commands' options, generated from the recipe's pydantic settings.

Name, type, choices and help come from each `Field`, so a new field is a new flag with no CLI edit. A flag
left out overrides nothing (the recipe's value stands); one given becomes the override of its dotted
recipe key, and the recipe is validated once, with every other override.
"""
from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Optional, Union

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from ltstg.recipe import Recipe

# flags users know by another name than their field
ALIASES = {"dataset.imbalance": "imb", "retrain.augment.name": "augmenter"}
# fields that are not options: make-dataset takes the source as its argument
NOT_OPTIONS = {"dataset.source"}


@dataclass(frozen=True)
class Flag:
    """One generated option: its Python parameter, its `--name`, the recipe key it sets and its typer annotation."""

    param: str
    option: str
    key: str
    annotation: Any


def section_flags(section: str) -> list[Flag]:
    """Every option of one recipe section (`dataset`, `pretrain`, `stg`, `retrain`), nested models flattened."""
    model = Recipe.model_fields[section].annotation
    flags = list(_model_flags(model, section, ""))
    if section == "retrain":
        flags += _augment_flags()
    return flags


def _model_flags(model: type[BaseModel], key_prefix: str, name_prefix: str) -> typing.Iterator[Flag]:
    for field_name, field in model.model_fields.items():
        key = f"{key_prefix}.{field_name}"
        if key in NOT_OPTIONS or field_name == "augment":
            continue
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _model_flags(field.annotation, key, f"{name_prefix}{field_name}_")
            continue
        yield _flag(key, ALIASES.get(key, f"{name_prefix}{field_name}"), field.annotation, _help(field))


def _augment_flags() -> list[Flag]:
    """`--augmenter` and each augmenter's settings; a setting several augmenters share (λ) is one flag."""
    models = typing.get_args(Recipe.model_fields["retrain"].annotation.model_fields["augment"].annotation)
    names = [typing.get_args(model.model_fields["name"].annotation)[0] for model in models]
    key = "retrain.augment.name"
    flags = [_flag(key, ALIASES[key], Literal[tuple(names)], "the feature augmenter (its settings start afresh)")]
    fields: dict[str, list[tuple[str, FieldInfo]]] = {}
    for name, model in zip(names, models):
        for field_name, field in model.model_fields.items():
            if field_name != "name":
                fields.setdefault(field_name, []).append((name, field))
    for field_name, owners in fields.items():
        helps = "; ".join(f"{owner}: {_help(field, field_name)}" for owner, field in owners)
        flags.append(_flag(f"retrain.augment.{field_name}", field_name, owners[0][1].annotation, helps))
    return flags


def _flag(key: str, name: str, annotation: Any, help_text: str) -> Flag:
    value_type = _optional(annotation)
    option = "--" + name.replace("_", "-")
    declaration = f"{option}/--no-{option[2:]}" if value_type is bool else option
    param = name.replace("-", "_")
    return Flag(param, option, key, Annotated[Optional[value_type], typer.Option(declaration, help=help_text)])


def _optional(annotation: Any) -> Any:
    """`X | None` -> X: a flag is optional anyway (left out = the recipe's value). A choice of types
    (`int | Literal["auto"]`) is read as text and parsed by the settings model, as a recipe's YAML value is."""
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        return members[0] if len(members) == 1 else str
    return annotation


def _help(field: FieldInfo, fallback: str = "") -> str:
    """The field's description and its default, as the model states them."""
    default = field.get_default(call_default_factory=True)
    shown = "" if isinstance(default, BaseModel) or default is None else f" (default {default})"
    return f"{field.description or fallback}{shown}".strip()


def overrides(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """The section's flags given on the command line as `{dotted key: value}`; flags left out are not overrides."""
    return {f.key: values[f.param] for f in section_flags(section) if values.get(f.param) not in (None, [], ())}


def with_flags(command: Callable[..., Any], flags: list[Flag]) -> Callable[..., Any]:
    """Give `command(ctx, ..., **flags)` a signature that lists the generated options after its own parameters."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in own}
    clash = [flag.param for flag in flags if flag.param in taken]
    if clash:
        raise RuntimeError(f"generated flags {clash} clash with {command.__name__}'s own parameters")
    generated = [inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=f.annotation)
                 for f in flags]
    command.__signature__ = inspect.Signature(own + generated)  # type: ignore[attr-defined]
    return command
