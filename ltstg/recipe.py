"""Settings of every stage as pydantic models, loaded from one YAML recipe plus flag overrides.

Fields marked `run_option` (where data sits, how fast to run) are recorded but never hashed into an
artifact id; everything else defines the result. No torch here.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ltstg.errors import LtstgError


def run_option(default: Any = None, **kwargs: Any) -> Any:
    """A field that changes where or how fast a stage runs, not what it produces: not part of ids."""
    return Field(default, json_schema_extra={"run_option": True}, **kwargs)


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSettings(Settings):
    num_classes: int = Field(10, ge=2, le=100, description="the generator draws 100 kinds of images")
    train_per_class: int = Field(500, ge=1)
    test_per_class: int = Field(100, ge=1)


SPLIT_LIST_SOURCES = ("imagenet-lt", "places-lt")  # their counts come from the published split lists


class DatasetSettings(Settings):
    source: Literal["synthetic", "cifar10", "cifar100", "imagefolder", "imagenet-lt", "places-lt"] = "synthetic"
    root: str | None = run_option(None, description="local copy of the source (image root for split lists)")
    split_dir: str | None = run_option(None, description="folder holding the ImageNet-LT / Places-LT split lists")
    download: bool = run_option(False, description="allow torchvision to download CIFAR")
    imbalance: float = Field(100.0, ge=1, description="n_max / n_min of the training set")
    profile: Literal["exp", "step"] = "exp"
    profile_order: Literal["label", "size"] = Field(
        "label", description="lay the profile over classes in label order (Cao et al.) or largest source class first"
    )
    subset_seed: int = Field(
        0, ge=0, description="draws the long-tail subset (Cao et al. use 0); the recipe seed varies training only"
    )
    size: int = Field(32, ge=8, le=1024, description="image side: stored size for image folders, crop for split lists")
    classes: list[str] | None = Field(None, description="class order for image folders (default: sorted names)")
    strict: bool = Field(False, description="fail on unreadable images instead of skipping them")
    many_above: int = Field(100, ge=0, description="a class with more train images is 'many'")
    few_below: int = Field(20, ge=1, description="a class with fewer train images is 'few'")
    synthetic: SyntheticSettings = SyntheticSettings()

    @model_validator(mode="before")
    @classmethod
    def _split_list_settings(cls, data: Any) -> Any:
        """A split list fixes the counts, so a profile asked of it would be silently ignored: refused here;
        and its images are ImageNet-sized, so the crop defaults to 224, not CIFAR's 32."""
        if not isinstance(data, dict) or data.get("source") not in SPLIT_LIST_SOURCES:
            return data
        fields = cls.model_fields
        changed = [key for key in ("imbalance", "profile", "profile_order", "subset_seed")
                   if key in data and data[key] != fields[key].default]
        if changed:
            raise ValueError(
                f"{data['source']} takes its class counts from the published split list; "
                f"remove {', '.join(f'dataset.{key}' for key in changed)}"
            )
        return {"size": 224, **data}

    @model_validator(mode="after")
    def _groups_do_not_overlap(self) -> "DatasetSettings":
        """Caught here, not by eval after hours of training."""
        if self.few_below > self.many_above + 1:
            raise ValueError(
                f"few_below ({self.few_below}) must not exceed many_above + 1 ({self.many_above + 1}): "
                "a class would be both many and few"
            )
        return self


class PretrainSettings(Settings):
    model: str = "resnet32_cifar"
    init_weights: str | None = run_option(None, description="local weights file to start from (its sha256 joins the id)")
    epochs: int = Field(200, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    wd: float = Field(2e-4, ge=0)
    warmup_epochs: int = Field(5, ge=0)
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    milestones: list[int] = [160, 180]
    gamma: float = Field(0.1, gt=0, le=1)
    mixup_alpha: float = Field(1.0, ge=0, description="Beta(alpha, alpha) for mixup; 0 disables it")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    eval_every: int = Field(10, ge=1, description="test the stage-1 classifier every N epochs (and at the end)")
    feature_views: int = Field(0, ge=0, description="extra augmented views of each training image in the features")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 on a GPU, fp32 on a CPU")
    channels_last: bool = run_option(True)
    compile: bool = run_option(False, description="torch.compile the model (GPU)")
    workers: int = run_option(4, ge=0, description="DataLoader workers for file-based sources")


class StgSettings(Settings):
    head_rule: Literal["count", "share", "half"] = Field(
        "share",
        description="which classes are head: count = more than head_min_count images; share = the largest classes "
        "that together hold head_share of the training images; half = the larger half of the classes",
    )
    head_min_count: int = Field(100, ge=0, description="count rule: head class = more train images than this")
    head_share: float = Field(0.8, gt=0, lt=1, description="share rule: the head holds this share of the images")
    memory: int = Field(1200, ge=0, description="size m of the FIFO memory dictionary; 0 = mini-batch only")
    hidden: int = Field(256, ge=1)
    depth: int = Field(2, ge=1, description="layers of each MLP (Linear-BN-ReLU ... Linear)")
    token_std: float = Field(0.02, gt=0, description="std of the normal init of the class tokens")
    var_activation: Literal["softplus", "exp"] = "softplus"
    smoothing: float = Field(0.9, ge=0, lt=1, description="momentum of each sample's running ground truth")
    loss: Literal["mse", "kl"] = "mse"
    mu_weight: float = Field(1.0, ge=0)
    var_weight: float = Field(1.0, ge=0)
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(128, ge=2)
    balanced: bool = Field(False, description="class-balanced mini-batches instead of plain shuffling")
    min_neighbors: int = Field(2, ge=1, description="anchors with fewer same-class samples are masked out")
    holdout: float = Field(0.1, ge=0, lt=1, description="share of head samples kept out to measure quality")


class NoAugment(Settings):
    name: Literal["none"] = "none"


class StgAugment(Settings):
    name: Literal["stg"] = "stg"
    lam: float = Field(1.5, ge=0, description="global strength λ")
    t: float = Field(0.5, gt=0, lt=1, description="a dimension keeps the original value where m > t")
    mu: Literal["eq3", "relative", "zero"] = Field(
        "eq3",
        description="eq3: the paper's shift a + (√Σε + μ)λβ; relative: μ minus the borrowed head mean's offset from "
        "the sample's own class mean, so the shift stays around its class; zero: Σ only (μ = 0)",
    )


class IsdaAugment(Settings):
    name: Literal["isda"] = "isda"
    lam: float = Field(0.5, ge=0)


class NoiseAugment(Settings):
    name: Literal["noise"] = "noise"
    std: float = Field(0.5, ge=0)


class DropoutAugment(Settings):
    name: Literal["dropout"] = "dropout"
    p: float = Field(0.2, ge=0, lt=1)


Augment = Annotated[
    Union[NoAugment, StgAugment, IsdaAugment, NoiseAugment, DropoutAugment], Field(discriminator="name")
]


class RetrainSettings(Settings):
    classifier: Literal["crt", "lws", "mislas", "tau-norm", "none"] = "crt"
    init: Literal["auto", "fresh", "stage1"] = Field(
        "auto",
        description="where a trained classifier starts: fresh (Kang et al.'s cRT) or the stage-1 classifier (MiSLAS); "
        "auto = fresh for crt, stage1 for mislas; lws, tau-norm and none always build on stage 1",
    )
    augment: Augment = NoAugment()
    tau: float = Field(1.0, ge=0, description="τ of τ-normalisation")
    smooth_head: float = Field(0.3, ge=0, lt=1, description="mislas: label-aware smoothing ε of the largest class")
    smooth_tail: float = Field(0.0, ge=0, lt=1, description="mislas: label-aware smoothing ε of the smallest class")
    smooth_shape: Literal["concave", "linear", "convex"] = Field("concave", description="mislas: ε between the two")
    lr_factor: float = Field(
        0.1, gt=0, le=1, description="mislas: the linear layer learns at lr × lr_factor, the per-class scales at lr"
    )
    sampling: Literal["balanced", "instance"] = "balanced"
    lr: float = Field(1e-3, gt=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    epochs: int = Field(10, ge=1, description="epochs-equivalent of iterations over the training features")
    batch_size: int = Field(128, ge=2)
    wd: float = Field(0.0, ge=0)


class EvalSettings(Settings):
    ece_bins: int = Field(15, ge=1)


class Recipe(Settings):
    seed: int = Field(0, ge=0)
    dataset: DatasetSettings = DatasetSettings()
    pretrain: PretrainSettings = PretrainSettings()
    stg: StgSettings = StgSettings()
    retrain: RetrainSettings = RetrainSettings()
    eval: EvalSettings = EvalSettings()
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named retrain variants for `ltstg run`: overrides of `retrain`"
    )


def id_settings(settings: BaseModel) -> dict[str, Any]:
    """The settings that define a result: the JSON dump minus run options."""
    out: dict[str, Any] = {}
    for name, field in type(settings).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("run_option"):
            continue
        value = getattr(settings, name)
        out[name] = id_settings(value) if isinstance(value, BaseModel) else _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file safely; syntax errors name their line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise LtstgError(f"{path}: cannot read the recipe ({error.strerror or error}).") from None
    except UnicodeDecodeError as error:
        raise LtstgError(f"{path}: not UTF-8 text (byte {error.start}); save the recipe as UTF-8.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or "invalid YAML"
        raise LtstgError(f"{path}:{where}: {problem}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise LtstgError(f"{path}: a recipe must be a mapping of stage names to settings.")
    return raw


def set_path(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested dict, creating levels as needed."""
    keys = dotted.split(".")
    node = raw
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[keys[-1]] = value


def merge_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Apply `{"stg.memory": 600, ...}` to a raw recipe dict; None means 'flag not given'.

    Choosing another augmenter (`retrain.augment.name`) starts its settings afresh, since the
    old augmenter's fields do not apply to the new one.
    """
    merged = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        if value is None:
            continue
        if dotted.endswith("augment.name"):
            parent = dotted.rsplit(".", 1)[0]
            current = _get_path(merged, parent)
            if not isinstance(current, dict) or current.get("name") != value:
                set_path(merged, parent, {"name": value})
            continue
        set_path(merged, dotted, value)
    return merged


def _get_path(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for key in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def validate(raw: dict[str, Any], source: str) -> Recipe:
    """Validate once; every problem, the methods' included, becomes one line `source: a.b.c: message`."""
    problems = []
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as error:
        recipe = None
        problems = [f"{source}: {_loc(p['loc']) or '(top level)'}: {p['msg']}" for p in error.errors()]
    methods = raw.get("methods") if isinstance(raw, dict) else None
    if isinstance(methods, dict):
        # checked against the defaults when the recipe's own retrain section is broken (reported above)
        base = recipe.retrain if recipe is not None else _retrain_or_default(raw.get("retrain"))
        for method, override in methods.items():
            if not isinstance(override, dict):
                continue  # pydantic already reported it
            try:
                _method_over(base, method, override)
            except LtstgError as error:
                problems.extend(f"{source}: {line}" for line in str(error).splitlines())
    if problems:
        raise LtstgError("\n".join(problems))
    assert recipe is not None
    return recipe


def _retrain_or_default(raw: Any) -> RetrainSettings:
    try:
        return RetrainSettings.model_validate(raw if isinstance(raw, dict) else {})
    except ValidationError:
        return RetrainSettings()


def _loc(loc: tuple[Any, ...]) -> str:
    """A field path as the user wrote it: pydantic adds the union tag (`augment.stg.lam`), we drop it."""
    parts = [str(part) for i, part in enumerate(loc) if not (i > 0 and loc[i - 1] == "augment" and i < len(loc) - 1)]
    return ".".join(parts)


def load_recipe(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """The recipe a command runs with: the YAML file (or the defaults) plus flag overrides."""
    raw = read_yaml(path) if path is not None else {}
    merged = merge_overrides(raw, overrides or {})
    source = str(path) if path is not None else "recipe"
    return validate(merged, source)


def method_settings(recipe: Recipe, method: str) -> RetrainSettings:
    """The retrain settings of one named method of `recipe.methods`, validated with the same rules."""
    if method not in recipe.methods:
        known = ", ".join(sorted(recipe.methods)) or "none"
        raise LtstgError(f"unknown method {method!r}; the recipe lists: {known}.")
    return _method_over(recipe.retrain, method, recipe.methods[method])


def _method_over(retrain: RetrainSettings, method: str, override: dict[str, Any]) -> RetrainSettings:
    base = retrain.model_dump(mode="json")
    flat = {f"retrain.{k}": v for k, v in _flatten(override).items()}
    merged = merge_overrides({"retrain": base}, flat)
    try:
        return RetrainSettings.model_validate(merged["retrain"])
    except ValidationError as error:
        lines = [
            f"methods.{method}.{_loc(e['loc'])}: {e['msg']}"
            for e in error.errors()
        ]
        raise LtstgError("\n".join(lines)) from None


def _flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"augment": {"name": "stg", "lam": 1}}` -> `{"augment.name": "stg", "augment.lam": 1}`, name first."""
    out: dict[str, Any] = {}
    for key in sorted(value, key=lambda k: (k != "name", k)):
        item = value[key]
        dotted = f"{prefix}{key}"
        if isinstance(item, dict):
            out.update(_flatten(item, dotted + "."))
        else:
            out[dotted] = item
    return out
