"""One self-contained HTML report of a run: the data, the curves, the methods table and the pictures.

Images are embedded as base64 PNG (no network, opens from disk); every section names the artifacts it
shows and the command that redraws it.
"""
from __future__ import annotations

import base64
import html
import io
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from ltstg import tables
from ltstg.inspect import figures, plots
from ltstg.store import SHORT, Artifact, atomic_write

CANDIDATES_NOTE = ("<p>Each method that selects its settings chose, per seed, the candidate with the best "
                   "class-balanced top-1 on the validation split (Val, %); the test split played no part. "
                   "<em>extended</em>: tried because the first choice sat on the edge of its grid.</p>")
MAX_WIDTH = 900  # pixels: embedded pictures are downscaled to this, so the file stays small


@dataclass
class RunReport:
    """What one report shows; `rows` are `pipeline.aggregate` / `evaluate.compare_rows` rows."""

    title: str
    dataset: Artifact
    features: Artifact
    rows: list[dict[str, Any]]
    classifiers: Sequence[tuple[str, Artifact]]  # (label, classifier) drawn in the pictures
    backbone: Artifact | None = None
    stg: Artifact | None = None
    kl: Any = None  # a kl-report Output or Artifact, for the rarest tail class
    with_tsne: bool = True
    omitted: list[str] = field(default_factory=list)  # sections left out, each with the reason
    commands: dict[str, str] = field(default_factory=dict)  # section -> command that reproduces it
    score_key: str | None = None  # the validation score in each row's candidate records; None: no candidates section


def write_report(report: RunReport, out: str | Path) -> Path:
    """Draw every picture into a temporary folder, embed them and write one HTML file."""
    sections: list[str] = []
    with tempfile.TemporaryDirectory() as folder:
        picture = _picture_maker(Path(folder))
        sections.append(_dataset_section(report, picture))
        if report.backbone is not None:
            png = picture("curves", lambda p: figures.curves_figure(report.backbone, report.stg, p))
            ids = _ids(report.backbone, report.stg)
            sections.append(_section("Training curves", ids, report.commands.get("curves"), png))
        sections.append(_section("Methods", _ids(*[c for _, c in report.classifiers]), report.commands.get("methods"),
                                 None, tables.html(tables.methods_cells(report.rows))))
        candidates = tables.candidates_cells(report.rows, report.score_key, SHORT) if report.score_key else None
        if candidates is not None and candidates.body:
            sections.append(_section("Candidates on the validation split", "the classifiers listed", None, None,
                                     CANDIDATES_NOTE + tables.html(candidates)))
        for name, title, draw in (
            ("per-class", "Per-class accuracy against training count", figures.per_class_figure),
            ("norms", "Classifier weight norms per class", figures.weight_norms_figure),
            ("reliability", "Reliability diagrams", figures.reliability_figure),
        ):
            png = picture(name, lambda p, draw=draw: draw(report.classifiers, report.features, p))
            sections.append(_section(title, _ids(*[c for _, c in report.classifiers]), report.commands.get(name), png))
        if report.kl is not None:
            png = picture("kl", lambda p: figures.kl_figure(report.kl, p))
            sections.append(_section(f"What the STG learned: KL for {report.kl.info['class_name']}",
                                     _ids(report.stg), report.commands.get("kl"), png, _kl_table(report.kl)))
        if report.with_tsne:
            from ltstg.inspect.tsne import tsne_figure

            picked = [c for _, c in report.classifiers][:2]

            def draw_tsne(path: Path) -> None:
                tsne_figure(report.features, path, stg=report.stg, classifiers=picked)

            png = picture("tsne", draw_tsne)
            sections.append(_section("t-SNE of the features", _ids(report.features, report.stg, *picked),
                                     report.commands.get("tsne"), png))
    if report.omitted:
        items = "".join(f"<li>{html.escape(reason)}</li>" for reason in report.omitted)
        sections.append(f"<section><h2>Left out</h2><ul>{items}</ul></section>")
    page = _PAGE.format(title=html.escape(report.title), body="\n".join(sections))
    out = Path(out)
    atomic_write(out, [page.encode("utf-8")])  # a failed write never leaves half a report in place of a good one
    return out


def _picture_maker(folder: Path) -> Callable[[str, Callable[[Path], Any]], str]:
    def make(name: str, draw: Callable[[Path], Any]) -> str:
        path = folder / f"{name}.png"
        draw(path)
        return _embedded(path)

    return make


def _embedded(path: Path) -> str:
    """The PNG as a data URI, downscaled to MAX_WIDTH."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if image.width > MAX_WIDTH:
            image = image.resize((MAX_WIDTH, round(image.height * MAX_WIDTH / image.width)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.quantize(colors=256).save(buffer, format="PNG", optimize=True)  # charts need no more colours
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _ids(*artifacts: Artifact | None) -> str:
    return ", ".join(f"{a.kind} {a.id[:SHORT]}" for a in artifacts if a is not None)


def _section(title: str, ids: str, command: str | None, png: str | None, extra: str = "") -> str:
    parts = [f'<section><h2>{html.escape(title)}</h2><p class="ids">artifacts: {html.escape(ids)}</p>']
    if command:
        parts.append(f"<pre>{html.escape(command)}</pre>")
    parts.append(extra)
    if png is not None:
        parts.append(f'<img alt="{html.escape(title)}" src="{png}">')
    parts.append("</section>")
    return "".join(parts)


def _dataset_section(report: RunReport, picture: Callable[[str, Callable[[Path], Any]], str]) -> str:
    dataset = report.dataset
    counts = dataset["class_counts"].tolist()
    names = dataset.info.get("class_names") or [str(c) for c in range(len(counts))]
    groups = dataset.info.get("groups") or ["?"] * len(counts)
    png = picture("counts", lambda p: plots.plot_class_counts(counts, groups, p, title=dataset.info.get("protocol", "")))
    rows = "".join(
        f"<tr><td>{c}</td><td>{html.escape(str(names[c]))}</td><td>{counts[c]}</td><td>{groups[c]}</td></tr>"
        for c in range(len(counts))
    )
    summary = ", ".join(f"{g}: {groups.count(g)}" for g in ("many", "medium", "few"))
    table = (f"<p>{len(counts)} classes, {sum(counts)} training images ({summary}).</p>"
             f"<table><tr><th>class</th><th>name</th><th>train</th><th>group</th></tr>{rows}</table>")
    return _section("Data set", _ids(dataset), report.commands.get("dataset"), png, table)


def _kl_table(kl: Any) -> str:
    from ltstg.inspect.kl import kl_rows

    rows = kl_rows(kl)
    head = "".join(f"<th>→{j + 1}</th>" for j in range(len(rows)))
    body = "".join(
        f"<tr><td>{row['sample']}</td><td>{row['train_index']}</td>"
        + "".join(f"<td>{row[f'kl_to_{j + 1}']:.2f}</td>" for j in range(len(rows)))
        + f"<td>{html.escape(str(row['borrowed_head_name']))}</td><td>{row['cosine']:.3f}</td></tr>"
        for row in rows
    )
    return (f"<table><tr><th>sample</th><th>train index</th>{head}<th>borrowed head</th><th>cosine</th></tr>"
            f"{body}</table>")


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1040px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0; font-size: 90%; }}
td, th {{ border: 1px solid #ccc; padding: 2px 8px; text-align: right; }}
pre {{ background: #f4f4f4; padding: 0.5em; white-space: pre-wrap; }}
img {{ max-width: 100%; }}
.ids {{ color: #666; font-size: 85%; }}
</style></head>
<body><h1>{title}</h1>
{body}
</body></html>
"""
