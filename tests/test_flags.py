"""Every stage command's options come from the recipe models: each flag parses onto its own field, and every
field of a stage's section has a flag."""
from __future__ import annotations

import typing

import pytest
import typer
from pydantic import BaseModel
from typer.testing import CliRunner

from ltstg.cli import app
from ltstg.flags import NOT_OPTIONS, section_flags
from ltstg.recipe import Recipe, load_recipe

COMMANDS = {"make-dataset": "dataset", "pretrain": "pretrain", "fit-stg": "stg", "retrain": "retrain"}
TEXT_SAMPLES = {"model": "resnet20_cifar"}  # a string field whose value the recipe checks later, by name


def augment_models() -> dict[str, type[BaseModel]]:
    union = Recipe.model_fields["retrain"].annotation.model_fields["augment"].annotation
    return {typing.get_args(m.model_fields["name"].annotation)[0]: m for m in typing.get_args(union)}


def field_of(key: str):
    """The pydantic field behind a dotted recipe key (augmenter fields: the first augmenter that has it)."""
    parts = key.split(".")
    if parts[:2] == ["retrain", "augment"]:
        if parts[2] == "name":
            return None
        owner = next(m for m in augment_models().values() if parts[2] in m.model_fields)
        return owner.model_fields[parts[2]]
    model: type[BaseModel] = Recipe
    for part in parts[:-1]:
        model = model.model_fields[part].annotation
    return model.model_fields[parts[-1]]


def sample(flag) -> tuple[list[str], typing.Any]:
    """Arguments that set the flag to a value other than its default, and the value the field must then hold."""
    field = field_of(flag.key)
    if field is None:  # --augmenter
        return [flag.option, "noise"], "noise"
    default = field.get_default(call_default_factory=True)
    value_type = typing.get_args(flag.annotation)[0]
    value_type = next(a for a in typing.get_args(value_type) if a is not type(None))
    name = flag.key.rsplit(".", 1)[-1]
    if typing.get_origin(value_type) is typing.Literal:
        value = next(choice for choice in typing.get_args(value_type) if choice != default)
        return [flag.option, str(value)], value
    if value_type is bool:
        return ([f"--no-{flag.option[2:]}"] if default else [flag.option]), not default
    if value_type is int:
        value = default + 1 if default is not None else 7
        return [flag.option, str(value)], value
    if value_type is float:
        value = default / 2 if default else 0.5
        return [flag.option, str(value)], value
    if typing.get_origin(value_type) is list:
        values = ["3", "7"] if typing.get_args(value_type)[0] is int else ["a", "b"]
        expected = [int(v) for v in values] if values[0].isdigit() else values
        return [arg for v in values for arg in (flag.option, v)], expected
    if int in typing.get_args(field.annotation):  # a size or a word (stg.memory: 600 or auto), read as text
        return [flag.option, "600"], 600
    value = TEXT_SAMPLES.get(name, f"some/{name}")
    return [flag.option, value], value


def owner_args(flag) -> list[str]:
    """An augmenter's own setting needs that augmenter chosen."""
    parts = flag.key.split(".")
    if parts[:2] != ["retrain", "augment"] or parts[2] == "name":
        return []
    owner = next(name for name, m in augment_models().items() if parts[2] in m.model_fields)
    return ["--augmenter", owner]


def value_at(recipe: Recipe, key: str):
    node: typing.Any = recipe
    for part in key.split("."):
        node = getattr(node, part)
    return node


CASES = [(command, flag) for command, section in COMMANDS.items() for flag in section_flags(section)]


@pytest.mark.parametrize("command,flag", CASES, ids=[f"{c} {f.option}" for c, f in CASES])
def test_every_generated_flag_lands_on_its_field(command, flag):
    from ltstg.flags import overrides

    click_command = typer.main.get_command(app).commands[command]
    args, expected = sample(flag)
    ctx = click_command.make_context(command, owner_args(flag) + args)
    given = overrides(COMMANDS[command], ctx.params)
    assert set(given) - {"retrain.augment.name"} <= {flag.key}
    recipe = load_recipe(None, given)
    assert value_at(recipe, flag.key) == expected


def leaf_keys(model: type[BaseModel], prefix: str) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += leaf_keys(field.annotation, f"{prefix}.{name}")
        elif name != "augment":
            keys.append(f"{prefix}.{name}")
    return keys


@pytest.mark.parametrize("section", COMMANDS.values())
def test_every_field_of_a_stage_section_is_a_flag(section):
    model = Recipe.model_fields[section].annotation
    expected = set(leaf_keys(model, section)) - NOT_OPTIONS
    if section == "retrain":
        expected |= {f"retrain.augment.{name}" for m in augment_models().values() for name in m.model_fields}
    flags = section_flags(section)
    assert {flag.key for flag in flags} == expected
    assert len({flag.option for flag in flags}) == len(flags)  # no two fields behind one flag


def test_the_flags_users_know_keep_their_names_and_help_comes_from_the_field():
    runner = CliRunner()
    for command, options in {
        "make-dataset": ["--imb", "--root", "--download", "--strict", "--size", "--split-dir", "--profile"],
        "pretrain": ["--compile", "--no-compile", "--feature-views", "--mixup-alpha", "--precision", "--workers"],
        "fit-stg": ["--memory", "--head-rule", "--head-share", "--smoothing", "--loss"],
        "retrain": ["--augmenter", "--lam", "--mu", "--std", "--p", "--tau", "--classifier", "--init", "--method"],
    }.items():
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "300"})
        assert result.exit_code == 0, result.output
        for option in options:
            assert option in result.output, (command, option)
    help_text = runner.invoke(app, ["fit-stg", "--help"], env={"COLUMNS": "300"}).output
    description = Recipe.model_fields["stg"].annotation.model_fields["memory"].description
    assert description.split(";")[0] in help_text


def test_a_bad_flag_value_is_one_line_naming_the_field(tmp_path):
    result = CliRunner().invoke(app, ["--store", str(tmp_path / "s"), "fit-stg", "--memory", "-1"])
    assert result.exit_code == 2
    assert "stg.memory" in result.output and "expected a size >= 0, or auto" in result.output
    assert not (tmp_path / "s").exists()
