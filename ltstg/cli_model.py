"""`ltstg export` and `ltstg predict`: a model taken out of the store, and used on new images."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ltstg.errors import LtstgError
from ltstg.terminal import Options, RichProgress, emit, guarded, note, output_file, run_context, text_table


@guarded
def export_command(
    ctx: typer.Context,
    classifier: Annotated[Optional[str], typer.Argument(
        help="Classifier, or a report of one (a run's id column): id prefix or name; default the newest classifier.")] = None,
    out: Annotated[Path, typer.Option(help="Folder to write (new or empty): model.safetensors, config.json.")] = Path("model"),
    format: Annotated[str, typer.Option("--format", help="safetensors, or onnx to add model.onnx (the onnx extra).")] = "safetensors",
) -> None:
    """Fold a stage-3 classifier into its backbone and write it in timm's Hub layout, with the temperature fitted on
    validation, the class names, the preprocessing and the lineage in config.json. Load it without ltstg's store:
    timm.create_model("local-dir:DIR", pretrained=True) (a CIFAR net after `import ltstg`)."""
    from ltstg.stages.export import Lineage, export

    options: Options = ctx.obj
    if format not in ("safetensors", "onnx"):
        raise LtstgError(f"--format {format!r}: use safetensors or onnx.")
    with RichProgress(not options.json) as progress:
        store = run_context(options, progress).store
        lineage = Lineage.named(store, classifier)
        written = export(lineage, out, onnx=format == "onnx")
    if written["temperature"] is None:
        note(f"note: classifier {lineage.classifier.id[:12]} has no temperature (its features have no validation "
             "split): predict gives uncalibrated probabilities")
    note(f"wrote {out}: {', '.join(written['files'])}")
    rows = [[key, str(value)] for key, value in written.items() if key not in ("lineage", "files")]
    rows += [[f"lineage.{kind}", artifact_id[:12]] for kind, artifact_id in written["lineage"].items()]
    emit(options, written, text_table(f"export {out}", ["field", "value"], rows))


@guarded
def predict_command(
    ctx: typer.Context,
    model: Annotated[str, typer.Argument(help="An exported folder, or a classifier or its report (id prefix or name).")],
    images: Annotated[list[str], typer.Argument(help="Image files, folders (every image under them), or .txt lists of paths.")],
    top_k: Annotated[int, typer.Option("--top-k", min=1, help="Labels per image.")] = 5,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 256,
    csv_path: Annotated[Optional[Path], typer.Option("--csv", help="Also write every row to this CSV file.")] = None,
) -> None:
    """Top-k labels with calibrated probabilities (softmax of logits / T) for each image, read as the model's data
    set was read; an unreadable image is one line on stderr and a row marked skipped."""
    from ltstg.runtime import resolve_device
    from ltstg.stages.export import Lineage, folded_model
    from ltstg.stages.predict import Predictor, image_paths, predict
    from ltstg.store import atomic_write

    options: Options = ctx.obj
    output_file(csv_path, (".csv",), "--csv")
    paths = image_paths(images)
    with RichProgress(not options.json) as progress:
        if Path(model).is_dir():
            predictor = Predictor.from_folder(model)
        else:
            store = run_context(options, progress).store
            predictor = Predictor.from_config(*folded_model(Lineage.named(store, model)))
        rows = predict(predictor, paths, device=resolve_device(options.device), top_k=top_k, batch_size=batch_size,
                       progress=progress)
    skipped = [row for row in rows if "skipped" in row]
    for row in skipped:
        note(f"skipped {row['path']}: {row['skipped']}")
    if skipped:
        note(f"warning: {len(skipped)} of {len(rows)} images could not be read (rows marked skipped)")
    if (predictor.features_precision, predictor.features_storage) != ("fp32", "float32"):
        note(f"note: eval scored this classifier on features made in {predictor.features_precision} and kept in "
             f"{predictor.features_storage}; predict runs float32, so near-ties may fall otherwise than in eval")
    if predictor.temperature is None:
        note("note: this model has no temperature fitted on validation: the probabilities are uncalibrated")
    if csv_path is not None:
        atomic_write(csv_path, [_csv(rows, top_k).encode("utf-8")])
        note(f"wrote {csv_path}")
    table_rows = [[row["path"], "skipped: " + row["skipped"]] if "skipped" in row else
                  [row["path"], ", ".join(f"{top['name']} {top['probability']:.3f}" for top in row["top"])]
                  for row in rows]
    emit(options, {"rows": rows, "temperature": predictor.temperature},
         text_table("predict", ["image", f"top {top_k} (probability)"], table_rows))


def _csv(rows: list[dict[str, Any]], top_k: int) -> str:
    """One line per image: path, skipped reason (empty when read), then label, name, probability per rank."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "skipped"] + [f"{field}_{rank}" for rank in range(1, top_k + 1)
                                           for field in ("label", "name", "probability")])
    for row in rows:
        ranked = [value for top in row.get("top", []) for value in (top["label"], top["name"], f"{top['probability']:.6g}")]
        writer.writerow([row["path"], row.get("skipped", "")] + ranked)
    return buffer.getvalue()
