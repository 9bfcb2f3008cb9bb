"""Settings of every stage as pydantic models, loaded from one YAML recipe plus flag overrides.

Fields marked `run_option` (where data sits, how fast to run) are recorded but never hashed into an
artifact id; everything else defines the result. A field added after ids were published (`since_ids`)
joins an id only when it is set to something else than its default, so the stores made before it keep
their ids. Stage 3's settings come from the method registries
(`ltstg.methods`): the augment union from the augmenters, the classifier choice and its fields from the
classifiers. No torch here, nor in the method modules' settings half: loading a recipe never imports it.
"""
from __future__ import annotations

import copy
import itertools
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from ltstg.augment.dropout import DropoutAugment  # noqa: F401 (re-exported, as before the registries)
from ltstg.augment.isda import IsdaAugment  # noqa: F401
from ltstg.augment.noise import NoiseAugment  # noqa: F401
from ltstg.augment.none import NoAugment  # noqa: F401
from ltstg.augment.stg import StgAugment  # noqa: F401
from ltstg.errors import LtstgError
from ltstg.methods import PLAIN, Settings, augmenters, classifiers, get_augmenter, since_ids


def run_option(default: Any = None, **kwargs: Any) -> Any:
    """A field that changes where or how fast a stage runs, not what it produces: not part of ids."""
    return Field(default, json_schema_extra={"run_option": True}, **kwargs)


class SyntheticSettings(Settings):
    num_classes: int = Field(10, ge=2, le=100, description="the generator draws 100 kinds of images")
    train_per_class: int = Field(500, ge=1, description="generated training images per class before the profile")
    test_per_class: int = Field(100, ge=1, description="generated test images per class")


MEMORY_ENTRY_MIN_BYTES = 4 * 1 + 16  # an STG memory entry: D float32 values, a label and a sample id (int64)


def machine_memory_bytes() -> int:
    """This machine's physical memory (POSIX); unbounded where the OS does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 1 << 62


MAX_VIEWS = 16  # the paper recipes use 4; each view is one more copy of the training features in memory and on disk
# their counts come from published splits (split lists, iNaturalist's annotation files), their images stay files
SPLIT_LIST_SOURCES = ("imagenet-lt", "places-lt", "inat2018")
VAL_PER_CLASS, VAL_TOTAL = 20, 1000  # the default validation size: see DatasetSettings.val_count
SELECT = "select"  # the key of a named method that lists candidate values, chosen on the validation split
BASE = "base"  # the key of a named method that names the method it is compared with, seed by seed
EXTEND = "extend"  # the key of a named method that selects: true adds one step past a grid edge it chose
METHOD_KEYS = (SELECT, BASE, EXTEND)  # what a named method holds besides retrain fields


class DatasetSettings(Settings):
    source: Literal["synthetic", "cifar10", "cifar100", "imagefolder", "imagenet-lt", "places-lt", "inat2018"] = "synthetic"
    root: str | None = run_option(None, description="local copy of the source (image root for split lists)")
    split_dir: str | None = run_option(
        None, description="folder holding the ImageNet-LT / Places-LT split lists, or iNaturalist's train2018.json "
        "and val2018.json (default there: the image root)",
    )
    storage: Literal["auto", "images", "paths"] = since_ids(
        "auto", description="an image folder's images decoded into the data set at dataset.size (images; auto) or "
        "kept as files, decoded at read time with random-resized crops as for ImageNet-LT (paths: for folders too "
        "large to hold decoded); split lists and iNaturalist are always paths",
    )
    download: bool = run_option(False, description="allow torchvision to download CIFAR")
    imbalance: float = Field(100.0, ge=1, description="n_max / n_min of the training set")
    profile: Literal["exp", "step"] = Field("exp", description="long-tail profile: exponential (Cao et al.) or step")
    profile_order: Literal["label", "size"] = Field(
        "label", description="lay the profile over classes in label order (Cao et al.) or largest source class first"
    )
    subset_seed: int = Field(
        0, ge=0, description="draws the long-tail subset (Cao et al. use 0); the recipe seed varies training only"
    )
    size: int = Field(32, ge=8, le=1024, description="image side: stored size for image folders, crop for split lists (224 there)")
    classes: list[str] | None = Field(None, description="class order for image folders (default: sorted names)")
    strict: bool = Field(False, description="fail on unreadable images instead of skipping them")
    val_per_class: int | None = Field(
        None, ge=1, description="validation images per class (CIFAR, generated data, subsampled image folders); "
        "default max(20, ceil(1000 / classes)): ImageNet-LT's 20 per class, and at least 1000 in all",
    )
    val_share: float = Field(
        0.1, gt=0, lt=1, description="share of each class held out for validation from an image folder kept as it "
        "is that has no val/ folder",
    )
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

    def val_count(self, num_classes: int) -> int:
        """Validation images per class: the field, or its default rule (20 per class as ImageNet-LT's own val, and
        enough classes' worth that selection scores at least 1000 images)."""
        return self.val_per_class if self.val_per_class is not None else max(VAL_PER_CLASS, -(-VAL_TOTAL // num_classes))

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
    model: str = Field("resnet32_cifar", description="any timm model name, or resnet20/32/44/56/110_cifar")
    init_weights: str | None = run_option(
        None, description="weights to start from: a local .safetensors/.pth file, or hf-hub:ORG/NAME[@REVISION] through "
        "huggingface_hub's cache (the file's sha256 joins the id)")
    epochs: int = Field(200, ge=1, description="stage-1 epochs")
    batch_size: int = Field(128, ge=2, description="global mini-batch size (split across torchrun processes)")
    lr: float = Field(0.1, gt=0, description="SGD learning rate after warm-up")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    wd: float = Field(2e-4, ge=0, description="SGD weight decay")
    warmup_epochs: int = Field(5, ge=0, description="linear learning-rate warm-up epochs")
    schedule: Literal["multistep", "cosine", "constant"] = Field("multistep", description="learning-rate schedule after warm-up")
    milestones: list[int] = Field([160, 180], description="multistep: epochs at which the lr is multiplied by gamma")
    gamma: float = Field(0.1, gt=0, le=1, description="multistep: the lr factor at each milestone")
    mixup_alpha: float = Field(1.0, ge=0, description="Beta(alpha, alpha) for mixup; 0 disables it")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the stage-1 loss")
    eval_every: int = Field(10, ge=1, description="test the stage-1 classifier every N epochs (and at the end)")
    feature_views: int = Field(
        0, ge=0, le=MAX_VIEWS, description="extra augmented views of each training image in the features (each one "
        "more copy of the training features in memory and on disk)",
    )
    feature_storage: Literal["float32", "float16"] = Field(
        "float32", description="dtype the extracted features and views are stored in (float16 halves the features "
        "artifact and its memory; stages convert to float32 as they read, views per batch)",
    )
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto = bf16 on a GPU, fp32 on a CPU")
    channels_last: bool = run_option(True, description="channels-last memory format (faster convolutions on a GPU)")
    compile: bool = run_option(False, description="torch.compile the model (GPU)")
    workers: int | None = run_option(
        None, ge=0, description="DataLoader workers for file-based sources (default: the node's cores, shared among "
        "its ranks, one left for each rank; at most 16)",
    )


class StgSettings(Settings):
    head_rule: Literal["count", "share", "half"] = Field(
        "share",
        description="which classes are head: count = more than head_min_count images; share = the largest classes "
        "that together hold head_share of the training images; half = the larger half of the classes",
    )
    head_min_count: int = Field(100, ge=0, description="count rule: head class = more train images than this")
    head_share: float = Field(0.8, gt=0, lt=1, description="share rule: the head holds this share of the images")
    memory: int | Literal["auto"] = Field(
        "auto", description="size m of the FIFO memory dictionary; 0 = mini-batch only; auto = the paper's 1200, or "
        "more where the least drawn head class would expect fewer than 8 entries in it (8 x the head classes with "
        "stg.balanced, else 8 x head images / images of the smallest head class)",
    )
    hidden: int = Field(256, ge=1, description="width of the STG's hidden layers")
    depth: int = Field(2, ge=1, description="layers of each MLP (Linear-BN-ReLU ... Linear)")
    token_std: float = Field(0.02, gt=0, description="std of the normal init of the class tokens")
    var_activation: Literal["softplus", "exp"] = Field("softplus", description="keeps the predicted Σ positive")
    smoothing: float = Field(0.9, ge=0, lt=1, description="momentum of each sample's running ground truth")
    loss: Literal["mse", "kl"] = Field("mse", description="how predicted (μ, Σ) are fitted to their ground truth")
    mu_weight: float = Field(1.0, ge=0, description="weight of the μ term of the loss")
    var_weight: float = Field(1.0, ge=0, description="weight of the Σ term of the loss")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate of the STG")
    epochs: int = Field(30, ge=1, description="STG epochs over the head features")
    batch_size: int = Field(128, ge=2, description="STG mini-batch size")
    balanced: bool = Field(False, description="class-balanced mini-batches instead of plain shuffling")
    min_neighbors: int = Field(2, ge=1, description="anchors with fewer same-class samples are masked out")
    holdout: float = Field(0.1, ge=0, lt=1, description="share of head samples kept out to measure quality")
    target_storage: Literal["float32", "float16"] = since_ids(
        "float32", description="dtype of each sample's running ground truth (2 x head samples x D values): float16 "
        "halves it (iNaturalist: 2.2 GB instead of 4.4), at about 3 significant digits",
    )

    @field_validator("memory", mode="before")
    @classmethod
    def _size_or_auto(cls, value: Any) -> Any:
        """One message for a bad memory, not one per member of the union."""
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            return value
        raise ValueError("expected a size >= 0, or auto")

    @field_validator("memory")
    @classmethod
    def _fits_this_machine(cls, value: int | str) -> int | str:
        """Whatever the feature width D, an entry takes 4 x D + 16 >= 20 bytes: a memory whose entries alone pass
        this machine's memory is refused here, not by the allocator after stage 1 (fit-stg checks it with D)."""
        if isinstance(value, int) and value * MEMORY_ENTRY_MIN_BYTES > machine_memory_bytes():
            raise ValueError(
                f"{value} entries need at least {value * MEMORY_ENTRY_MIN_BYTES / 1e9:.1f} GB (4 x feature width + 16 "
                f"bytes each); this machine has {machine_memory_bytes() / 1e9:.1f} GB"
            )
        return value


def augment_union() -> Any:
    """`retrain.augment`: one settings model per registered augmenter, told apart by its `name`."""
    models = tuple(entry.settings for entry in augmenters().values())
    return Annotated[Union[models], Field(discriminator="name")]  # noqa: UP007 (a union built at run time)


def retrain_settings_model() -> type[Settings]:
    """RetrainSettings from the registries: the core fields, with every classifier's own fields flat after
    `augment` (`retrain.tau`); a field of a classifier that is not `in_every_id` enters only its own ids."""
    names = tuple(classifiers())
    fields: dict[str, Any] = {
        "classifier": (Literal[names], Field("crt", description="the stage-3 classifier")),
        "init": (Literal["auto", "fresh", "stage1"], Field(
            "auto",
            description="where a trained classifier starts: fresh (Kang et al.'s cRT) or the stage-1 classifier "
            "(MiSLAS); auto = fresh for crt, stage1 for mislas; lws, tau-norm and none always build on stage 1",
        )),
        "augment": (augment_union(), get_augmenter(PLAIN).settings()),
    }
    core = ("sampling", "samples_per_class", "optimizer", "lr", "momentum", "schedule", "schedule_step", "epochs",
            "batch_size", "wd", "bn_shift")
    for name, entry in classifiers().items():
        for field, info in entry.settings.model_fields.items():
            if field in fields or field in core:
                raise TypeError(f"classifier {name!r}: field {field!r} is already a retrain field")
            annotation = info.annotation
            if not entry.in_every_id:
                extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
                info = copy.copy(info)  # the classifier's own model keeps its field as it is
                info.json_schema_extra = {**extra, "only_with": {"classifier": name}}
            fields[field] = (annotation, info)
    fields.update(
        sampling=(Literal["balanced", "class_aware", "instance"], Field(
            "balanced",
            description="balanced = independent class-balanced draws; class_aware = Kang et al.'s and MiSLAS's "
            "sampler (classes in shuffled cycles, samples_per_class consecutive draws of a class, each class's samples "
            "without replacement until it is used up); instance = plain shuffling",
        )),
        samples_per_class=(int, since_ids(
            4, only_with={"sampling": "class_aware"}, ge=1, description="class_aware: consecutive draws of one class")),
        optimizer=(Literal["adam", "sgd"], since_ids(
            "adam", description="adam (the STG paper's stage 3) or sgd with momentum (Kang et al.'s cRT, MiSLAS)"
        )),
        lr=(float, Field(1e-3, gt=0, description="learning rate of the classifier")),
        momentum=(float, since_ids(
            0.9, only_with={"optimizer": "sgd"}, ge=0, lt=1, description="sgd: momentum"
        )),
        schedule=(Literal["cosine", "constant"], Field("cosine", description="learning-rate schedule")),
        schedule_step=(Literal["step", "epoch"], since_ids(
            "step", description="when the lr changes: every step, or once per epoch as Kang et al. and MiSLAS step it"
        )),
        epochs=(int, Field(10, ge=1, description="epochs-equivalent of iterations over the training features")),
        batch_size=(int, Field(128, ge=2, description="mini-batch size")),
        wd=(float, Field(0.0, ge=0, description="weight decay")),
        bn_shift=(bool, since_ids(
            False, description="train on features whose backbone BatchNorm statistics were re-estimated on "
            "class-aware, augmented training batches first (MiSLAS's shift_bn, as far as a frozen backbone allows)",
        )),
    )
    return create_model("RetrainSettings", __base__=Settings, __module__=__name__, **fields)


Augment = augment_union()
RetrainSettings = retrain_settings_model()


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
        default_factory=dict, description="named retrain variants for `ltstg run`: overrides of `retrain`, each "
        "optionally with `select: {field: [candidates]}`, chosen per seed on the validation split, and `base: "
        "NAME`, the method it adds an augmenter to (the same stage 3 but `augment`), its delta shown per seed",
    )


def id_settings(settings: BaseModel) -> dict[str, Any]:
    """The settings that define a result: the JSON dump minus run options and the fields of methods not chosen."""
    return _dump(settings, run_options=False)


def chosen_settings(settings: BaseModel) -> dict[str, Any]:
    """The JSON dump minus the fields of methods not chosen: what an artifact records as its settings."""
    return _dump(settings, run_options=True)


def _dump(settings: BaseModel, *, run_options: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in type(settings).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("run_option") and not run_options:
            continue
        if extra.get("since_ids") and "only_with" not in extra and not run_options and getattr(settings, name) == field.default:
            continue  # added after ids were published: at its default it leaves them as they were
        if any(getattr(settings, key, None) != value for key, value in extra.get("only_with", {}).items()):
            continue  # a field of another classifier than the chosen one: it changes nothing here
        value = getattr(settings, name)
        out[name] = _dump(value, run_options=run_options) if isinstance(value, BaseModel) else _jsonable(value)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load keeps the last of two equal keys without a word; a recipe says which one it means.
    A merge (`<<: *anchor`, one method built on another) may be overridden by the keys written beside it."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


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
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a safe loader that also refuses a key given twice
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
        problems = [f"{source}: {_loc(p['loc']) or '(top level)'}: {_message(p)}" for p in error.errors()]
    methods = raw.get("methods") if isinstance(raw, dict) else None
    if isinstance(methods, dict):
        # checked against the defaults when the recipe's own retrain section is broken (reported above)
        base = recipe.retrain if recipe is not None else _retrain_or_default(raw.get("retrain"))
        for method, override in methods.items():
            if not isinstance(override, dict):
                continue  # pydantic already reported it
            try:
                _candidates(base, method, override)
            except LtstgError as error:
                problems.extend(f"{source}: {line}" for line in str(error).splitlines())
    if problems:
        raise LtstgError("\n".join(problems))
    assert recipe is not None
    return recipe


def settings_error(error: ValidationError, prefix: str) -> LtstgError:
    """One line per problem, `prefix: field: message`, as the recipe's own errors read."""
    return LtstgError("\n".join(f"{prefix}: {_loc(e['loc']) or '(top level)'}: {_message(e)}" for e in error.errors()))


def _message(error: Any) -> str:
    """pydantic's message, except where it names no fix: augmenter settings given without an augmenter."""
    if error["type"] == "union_tag_not_found":
        names = ", ".join(entry.settings.model_fields["name"].default for entry in augmenters().values())
        return f"augmenter settings without an augmenter name; set it (--augmenter / augment.name): one of {names}"
    return error["msg"].removeprefix("Value error, ")


def _retrain_or_default(raw: Any) -> RetrainSettings:
    try:
        return RetrainSettings.model_validate(raw if isinstance(raw, dict) else {})
    except ValidationError:
        return RetrainSettings()


def _loc(loc: tuple[Any, ...]) -> str:
    """A field path as the user wrote it: pydantic adds the union tag (`augment.stg.lam`), we drop it."""
    parts = [str(part) for i, part in enumerate(loc) if not (i > 0 and loc[i - 1] == "augment" and i < len(loc) - 1)]
    return ".".join(parts)


def load_recipe(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, *, method: str | None = None
) -> Recipe:
    """The recipe a command runs with: the YAML file (or the defaults), then one named method of its `methods`
    as the `retrain` section (as `method_settings` makes it), then flag overrides, validated once."""
    raw = read_yaml(path) if path is not None else {}
    if method is not None:
        methods = raw.get("methods") if isinstance(raw.get("methods"), dict) else {}
        retrain = raw.get("retrain") if isinstance(raw.get("retrain"), dict) else {}
        override = _named_method(methods, method)
        if SELECT in override:
            raise LtstgError(
                f"method {method!r} chooses among candidates on the validation split ({SELECT}: "
                f"{', '.join(map(str, override[SELECT])) if isinstance(override[SELECT], dict) else '?'}); "
                f"run it with `ltstg run --methods {method!r}`, or give one candidate's settings as flags."
            )
        raw = {**raw, "retrain": with_method(retrain, {k: v for k, v in override.items() if k not in (BASE, EXTEND)})}
    merged = merge_overrides(raw, overrides or {})
    source = str(path) if path is not None else "recipe"
    return validate(merged, source)


def method_settings(recipe: Recipe, method: str) -> RetrainSettings:
    """The retrain settings of one named method of `recipe.methods` (its first candidate, where it selects),
    validated with the same rules."""
    return method_candidates(recipe, method)[0][1]


def method_candidates(recipe: Recipe, method: str) -> list[tuple[dict[str, Any], RetrainSettings]]:
    """Every candidate of one named method: (the selected fields' values, its settings). A method without
    `select` has one candidate, with no values."""
    return _candidates(recipe.retrain, method, _named_method(recipe.methods, method))


def _candidates(
    retrain: RetrainSettings, method: str, override: dict[str, Any]
) -> list[tuple[dict[str, Any], RetrainSettings]]:
    fixed = {key: value for key, value in override.items() if key not in METHOD_KEYS}
    grid = select_grid(method, override.get(SELECT, {}))
    out, problems = [], []
    for values in grid:
        try:
            out.append((values, _candidate(retrain, method, fixed, values)))
        except LtstgError as error:
            where = f" ({', '.join(f'{k}={v}' for k, v in values.items())})" if values else ""
            problems += [f"{line}{where}" for line in str(error).splitlines() if f"{line}{where}" not in problems]
    seen: dict[str, dict[str, Any]] = {}
    for values, settings in out:  # [1, 1.0] or [0.01, "0.01"]: one classifier counted as two candidates
        key = json.dumps(settings.model_dump(mode="json"), sort_keys=True)
        if key in seen:
            problems.append(f"methods.{method}.{SELECT}: candidates {seen[key]} and {values} are the same settings "
                            "once validated; give each value once.")
        seen.setdefault(key, values)
    if problems:
        raise LtstgError("\n".join(problems))
    return out


def _candidate(retrain: RetrainSettings, method: str, fixed: dict[str, Any], values: dict[str, Any]) -> RetrainSettings:
    candidate = copy.deepcopy(fixed)
    for dotted, value in values.items():
        set_path(candidate, dotted, value)
    return _method_over(retrain, method, candidate)


def method_extends(recipe: Recipe, method: str) -> bool:
    """Whether a selecting method adds one step past a grid edge it chose (`methods.<method>.extend: true`)."""
    override = _named_method(recipe.methods, method)
    extend = override.get(EXTEND, False)
    if not isinstance(extend, bool) or (extend and SELECT not in override):
        raise LtstgError(f"methods.{method}.{EXTEND}: true or false, on a method that selects (`{SELECT}`).")
    return extend


def step_past(numbers: list[float], where: str) -> float:
    """One step past the lowest or highest of a grid's numbers: by the ratio to the next value where the numbers
    are positive (lr 0.003 after 0.001: 0.009; λ 0.5 below 1: 0.25), else by the difference; whole numbers stay
    whole."""
    ordered = sorted(numbers)
    edge, inner = (ordered[0], ordered[1]) if where == "lowest" else (ordered[-1], ordered[-2])
    beyond = edge * edge / inner if edge > 0 and inner > 0 else 2 * edge - inner
    return round(beyond) if all(isinstance(n, int) for n in numbers) else float(f"{beyond:.6g}")


def extended_candidate(
    recipe: Recipe, method: str, values: dict[str, Any], field: str, value: Any
) -> tuple[dict[str, Any], RetrainSettings]:
    """The candidate with `values` but `field` at `value` (one step past its grid), validated like the others."""
    override = _named_method(recipe.methods, method)
    fixed = {key: item for key, item in override.items() if key not in METHOD_KEYS}
    moved = {**values, field: value}
    return moved, _candidate(recipe.retrain, method, fixed, moved)


def method_base(recipe: Recipe, method: str) -> str | None:
    """The method `method` is compared with (`methods.<method>.base`), checked to be another method of the recipe."""
    base = _named_method(recipe.methods, method).get(BASE)
    if base is None:
        return None
    if not isinstance(base, str) or base == method or base not in recipe.methods:
        others = ", ".join(name for name in recipe.methods if name != method) or "none"
        raise LtstgError(f"methods.{method}.{BASE}: {base!r} is not another method of the recipe ({others}).")
    return base


def select_grid(method: str, select: Any) -> list[dict[str, Any]]:
    """The candidates of `methods.<method>.select` (field -> values, fields relative to `retrain`) as one dict of
    values each, every combination, the first field varying slowest; [{}] without a selection."""
    where = f"methods.{method}.{SELECT}"
    if not isinstance(select, dict):
        raise LtstgError(f"{where}: expected a mapping of retrain fields to candidate lists, e.g. augment.lam: [0.5, 1].")
    for field, values in select.items():
        if not isinstance(values, list) or len(values) < 2:
            raise LtstgError(f"{where}.{field}: give at least two candidate values as a list, e.g. [0.5, 1].")
        seen = [json.dumps(value, sort_keys=True) for value in values]
        if len(set(seen)) != len(seen):
            raise LtstgError(f"{where}.{field}: a candidate is listed twice; give each value once.")
    fields = list(select)
    return [dict(zip(fields, combo)) for combo in itertools.product(*(select[f] for f in fields))] or [{}]


def _named_method(methods: dict[str, Any], method: str) -> dict[str, Any]:
    if method not in methods or not isinstance(methods[method], dict):
        known = ", ".join(sorted(methods)) or "none"
        raise LtstgError(f"unknown method {method!r}; the recipe lists: {known}.")
    return methods[method]


def with_method(retrain: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """A `retrain` section with a method's override on top: the one way a named method becomes settings
    (another augmenter name starts its settings afresh, as a flag does)."""
    flat = {f"retrain.{key}": value for key, value in flatten(override).items()}
    return merge_overrides({"retrain": retrain}, flat)["retrain"]


def _method_over(retrain: RetrainSettings, method: str, override: dict[str, Any]) -> RetrainSettings:
    try:
        return RetrainSettings.model_validate(with_method(retrain.model_dump(mode="json"), override))
    except ValidationError as error:
        lines = [f"methods.{method}.{_loc(e['loc'])}: {_message(e)}" for e in error.errors()]
        raise LtstgError("\n".join(lines)) from None


def flatten(value: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"augment": {"name": "stg", "lam": 1}}` -> `{"augment.name": "stg", "augment.lam": 1}`, name first."""
    out: dict[str, Any] = {}
    for key in sorted(value, key=lambda k: (k != "name", k)):
        item = value[key]
        dotted = f"{prefix}{key}"
        if isinstance(item, dict):
            out.update(flatten(item, dotted + "."))
        else:
            out[dotted] = item
    return out


def parse_sweeps(items: list[str]) -> dict[str, list[Any]]:
    """`a.b=v1,v2` items as field -> values (YAML scalars, as --set reads them); every value given once."""
    sweeps: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise LtstgError(f"--sweep {item!r}: expected FIELD=V1,V2,..., e.g. --sweep stg.memory=0,600,1200.")
        if key == "seed":
            raise LtstgError("--sweep seed: seeds are not a setting to sweep; give --seeds 0 --seeds 1 ... "
                             "(they vary the stages from --vary-from on and are averaged in each row).")
        if key in sweeps:
            raise LtstgError(f"--sweep {key} is given twice; list all its values in one --sweep.")
        texts = values.split(",")
        if any(not text.strip() for text in texts):
            raise LtstgError(f"--sweep {key}={values}: a value is empty; write every value, e.g. --sweep {key}=V1,V2.")
        try:
            parsed = [yaml.safe_load(text) for text in texts]
        except yaml.YAMLError:
            raise LtstgError(f"--sweep {item!r}: a value is not a YAML scalar.") from None
        seen = [json.dumps(value, sort_keys=True) for value in parsed]
        repeated = [text.strip() for text, mark in zip(texts, seen) if seen.count(mark) > 1]
        if repeated:
            raise LtstgError(f"--sweep {key} lists {repeated[0]} more than once; give each value once.")
        sweeps[key] = parsed
    return sweeps


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`a.b=value` pairs; values are read as YAML scalars, so numbers and booleans keep their type."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LtstgError(f"--set {item!r}: expected FIELD=VALUE, e.g. --set stg.memory=600.")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise LtstgError(f"--set {item!r}: the value is not valid YAML.") from None
    return overrides
