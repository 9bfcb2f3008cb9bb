"""The methods table, once: one column specification drawn as terminal, Markdown, HTML and JSON.

A table is first made into text cells (`Cells`: header, body, per-column alignment), and every format
draws those same strings, so a number reads the same wherever it is shown:

- Method: the method's name, then ` [not converged: k of n]` when k of the row's n classifiers did not converge;
- one column per swept field, its value as `str()` (1, 1.0 and True stay apart);
- Chosen on val, where a row selected settings on the validation split: each seed's choice, `(lowest)` or
  `(highest)` after a value at the edge of its grid;
- All, Many, Medium, Few, ECE, ECE (T): percent with one decimal, ` ± std` when the row has `<key>_std` (several
  seeds); (T): after temperature scaling fitted on the validation split;
- vs base, where a row names a `base` method: its top-1 minus the base's in points, signed, paired by seed
  (` ± std` over the seeds), right after All;
- NLL, NLL (T): three decimals, no std (the README's tables print it so);
- id: the report id(s) the row was read from.
A missing value is `–`. The pivot (`wide_table`) puts top-1 for each value of one swept field side by side.

Formats:
- terminal (`cli.py`): `for_terminal(cells)`, the same columns but id: the terminal table has never had one,
  an averaged row's id lists one short id per seed and would crowd out the scores, and `--json` and
  the Markdown carry it. `cli.py` turns each cell into a rich `Text`, so `[...]` is never markup.
- Markdown (`markdown`): byte for byte what the README's tables were made with; ids in backticks; a `|` in a
  cell is escaped as `\\|` so it cannot split the cell.
- HTML (`html`): every cell escaped; ids in `<code>`; each cell carries its alignment, so the table reads
  the same in any page.
- JSON: the rows themselves (`--json`); every cell is a function of one row, so the JSON redraws the table.

Text the user supplied (method names, flags, swept values) is shown literally in every format.
Nothing here knows rich, torch or the store.
"""
from __future__ import annotations

import html as html_module
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ltstg.errors import LtstgError

MISSING = "–"
PERCENT = (("all", "All"), ("many", "Many"), ("medium", "Medium"), ("few", "Few"), ("ece", "ECE"),
           ("ece_calibrated", "ECE (T)"))
NUMBERS = (("nll", "NLL"), ("nll_calibrated", "NLL (T)"))  # three decimals, no std


@dataclass(frozen=True)
class Column:
    """One column of the methods table: its header, how one row becomes its cell, and how it is set."""

    header: str
    cell: Callable[[dict[str, Any]], str]
    align: str = "right"  # "left" for names and labels, "right" for numbers
    code: bool = False  # an identifier: Markdown sets it in backticks, HTML in <code>
    terminal: bool = True  # False: left out of the terminal table


@dataclass(frozen=True)
class Cells:
    """A table as text, which every format draws cell for cell; the per-column lists match `header`."""

    header: list[str]
    body: list[list[str]]
    align: list[str]
    code: list[bool]
    terminal: list[bool]


def percent(row: dict[str, Any], key: str) -> str:
    """A fraction as percent with one decimal, ± the std over seeds when there is one; – when missing."""
    value, spread = row.get(key), row.get(f"{key}_std")
    if value is None:
        return MISSING
    return f"{100 * value:.1f} ± {100 * spread:.1f}" if spread is not None else f"{100 * value:.1f}"


def decimals(row: dict[str, Any], key: str, places: int) -> str:
    """A plain number with `places` decimals; – when missing."""
    value = row.get(key)
    return MISSING if value is None else f"{value:.{places}f}"


def flag(row: dict[str, Any]) -> str:
    """' [not converged: k of n]' when k of the row's n classifiers did not converge, else nothing."""
    missed = row.get("not_converged") or 0
    return f" [not converged: {missed} of {len(row.get('reports') or [None])}]" if missed else ""


def method_cell(row: dict[str, Any]) -> str:
    """The method's name, flagged when a classifier behind the row did not converge: its number is no result."""
    return f"{row['method']}{flag(row)}"


def chosen_cell(row: dict[str, Any]) -> str:
    """What each seed chose on the validation split, seeds apart by ' / ' (`lam=1, mu=zero / lam=1.5, …`); – for a
    row that selected nothing. A field is named by its last part, as the recipe's `select` lists it; a value at
    the lowest or highest of its grid says so (`lam=0.5 (lowest)`): the best may lie beyond the grid."""
    chosen = row.get("chosen")
    if not chosen:
        return MISSING
    edges = row.get("edges") or [{}] * len(chosen)

    def said(field: str, value: Any, edge: dict[str, str]) -> str:
        return f"{field.rsplit('.', 1)[-1]}={value}" + (f" ({edge[field]})" if field in edge else "")

    return " / ".join(", ".join(said(field, value, edge) for field, value in values.items())
                      for values, edge in zip(chosen, edges))


def delta_cell(row: dict[str, Any]) -> str:
    """Top-1 against the row's base in points, signed, ± its std over the paired seeds; – without a base."""
    value, spread = row.get("vs_base"), row.get("vs_base_std")
    if value is None:
        return MISSING
    return f"{100 * value:+.1f}" + (f" ± {100 * spread:.1f}" if spread is not None else "")


def methods_columns(swept: Sequence[str] = (), selected: bool = False, based: bool = False) -> list[Column]:
    """The methods table's columns: method, swept fields, what was chosen on validation, the scores, the id."""
    return [
        Column("Method", method_cell, "left"),
        *(Column(field, lambda row, field=field: str(row["swept"][field]), "left") for field in swept),
        *([Column("Chosen on val", chosen_cell, "left")] if selected else []),
        Column("All", lambda row: percent(row, "all")),
        *([Column("vs base", delta_cell)] if based else []),
        *(Column(header, lambda row, key=key: percent(row, key)) for key, header in PERCENT if key != "all"),
        *(Column(header, lambda row, key=key: decimals(row, key, 3)) for key, header in NUMBERS),
        Column("id", lambda row: str(row.get("id") or MISSING), "left", code=True, terminal=False),
    ]


def methods_cells(rows: list[dict[str, Any]], swept: Sequence[str] | None = None) -> Cells:
    """Methods as rows (`compare_rows` / `pipeline.aggregate` rows); `swept` adds a column per swept field, and
    rows that selected settings on the validation split add the column of their choices."""
    columns = methods_columns(swept or (), selected=any(row.get("chosen") for row in rows),
                              based=any(row.get("base") for row in rows))
    return Cells(
        header=[column.header for column in columns],
        body=[[column.cell(row) for column in columns] for row in rows],
        align=[column.align for column in columns],
        code=[column.code for column in columns],
        terminal=[column.terminal for column in columns],
    )


def require_swept(field: str, swept: Sequence[str]) -> None:
    """A table can only be pivoted on a field the run swept."""
    if field not in swept:
        how = "give several recipes" if field == "recipe" else f"sweep it, e.g. --sweep {field}=V1,V2"
        raise LtstgError(f"--columns {field}: not a swept field; {how}.")


def wide_table(
    rows: list[dict[str, Any]], field: str, swept: Sequence[str]
) -> tuple[list[str], list[str], list[list[str]]]:
    """A sweep's rows pivoted: one top-1 column per value of `field` (the paper's Table 1 puts imbalances side by side).

    Returns the label columns' names, the value columns' names and the body as text cells; a cell is the
    All column's text plus the row's flag, and a method never run at a value shows –.
    """
    require_swept(field, swept)
    others = [name for name in swept if name != field]
    values: list[str] = []  # as text: a swept value may be a mapping, and 1, 1.0 and true must stay apart
    cells: dict[tuple, dict] = {}
    for row in rows:
        value = str(row["swept"][field])
        if value not in values:
            values.append(value)
        key = (row["method"], *(str(row["swept"][name]) for name in others))
        cells.setdefault(key, {})[value] = percent(row, "all") + flag(row)
    methods = list(dict.fromkeys(row["method"] for row in rows))
    keys = sorted(cells, key=lambda key: methods.index(key[0]))  # each method's rows together, in recipe order
    body = [list(key) + [cells[key].get(value, MISSING) for value in values] for key in keys]
    return ["Method", *others], [f"{field}={value}" for value in values], body


def wide_cells(rows: list[dict[str, Any]], field: str, swept: Sequence[str]) -> Cells:
    """`wide_table` as cells: labels on the left, one right-aligned top-1 column per value."""
    labels, values, body = wide_table(rows, field, swept)
    width = len(labels) + len(values)
    return Cells(
        header=labels + values,
        body=body,
        align=["left"] * len(labels) + ["right"] * len(values),
        code=[False] * width,
        terminal=[True] * width,
    )


def candidates_cells(rows: list[dict[str, Any]], score_key: str, id_length: int) -> Cells:
    """Every candidate a row tried on the validation split, seed by seed: its values, its validation score
    (`score_key`, in percent), whether it was chosen or came from extending the grid, and its classifier's id
    (its first `id_length` characters);
    rows that selected nothing are left out."""
    header = ["Method", "Seed", "Candidate", "Val", "", "classifier"]
    body = []
    for row in rows:
        for seed, tried in zip(row.get("seeds") or [], row.get("candidates") or []):
            for record in tried:
                values = ", ".join(f"{field.rsplit('.', 1)[-1]}={value}" for field, value in record["values"].items())
                marks = [mark for mark, on in (("chosen", record.get("chosen")), ("extended", record.get("extended")),
                                               ("diverged", record.get("diverged"))) if on]
                score = record.get(score_key)
                shown = f"{100 * score:.1f}" if isinstance(score, (int, float)) and math.isfinite(score) else MISSING
                body.append([row["method"], str(seed), values, shown, ", ".join(marks),
                             str(record["classifier"] or MISSING)[:id_length]])
    return Cells(header=header, body=body, align=["left", "right", "left", "right", "left", "left"],
                 code=[False] * 5 + [True], terminal=[True] * 5 + [False])


def for_terminal(cells: Cells) -> Cells:
    """The columns the terminal shows: all but the ids (see the module docstring)."""
    keep = [index for index, shown in enumerate(cells.terminal) if shown]
    return Cells(
        header=[cells.header[i] for i in keep],
        body=[[line[i] for i in keep] for line in cells.body],
        align=[cells.align[i] for i in keep],
        code=[cells.code[i] for i in keep],
        terminal=[True] * len(keep),
    )


def markdown(cells: Cells) -> str:
    """A README-ready Markdown table, ending in a newline."""

    def text(cell: str, code: bool) -> str:
        cell = cell.replace("|", "\\|")
        return f"`{cell}`" if code else cell

    lines = [
        "| " + " | ".join(text(name, False) for name in cells.header) + " |",
        "|" + "".join("---|" if align == "left" else "---:|" for align in cells.align),
    ]
    lines += ["| " + " | ".join(text(cell, code) for cell, code in zip(line, cells.code)) + " |" for line in cells.body]
    return "\n".join(lines) + "\n"


def html(cells: Cells) -> str:
    """One escaped HTML <table>, for a page that supplies its own styling."""

    def text(cell: str, code: bool) -> str:
        cell = html_module.escape(cell)
        return f"<code>{cell}</code>" if code else cell

    head = "".join(
        f'<th style="text-align: {align}">{html_module.escape(name)}</th>'
        for name, align in zip(cells.header, cells.align)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td style="text-align: {align}">{text(cell, code)}</td>'
            for cell, align, code in zip(line, cells.align, cells.code)
        )
        + "</tr>"
        for line in cells.body
    )
    return f"<table><tr>{head}</tr>{body}</table>"
