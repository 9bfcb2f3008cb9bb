"""ltstg.tables: one column specification, and the terminal, Markdown, HTML and JSON agree cell for cell."""
import io
import json
import re
from html.parser import HTMLParser

import pytest
from rich.console import Console

from ltstg.errors import LtstgError
from ltstg.tables import candidates_cells, for_terminal, html, markdown, methods_cells, wide_cells
from ltstg.terminal import methods_table


def comparison_table(rows, title, swept=None):
    """The terminal table the CLI prints for a methods table."""
    return methods_table(title, methods_cells(rows, swept))


def wide_rich_table(rows, title, field, swept):
    """The terminal table the CLI prints for a pivoted sweep."""
    return methods_table(title, wide_cells(rows, field, swept))

SWEPT = ["stg.memory", "aug"]
ROWS = [
    {"method": "cRT [v2]", "swept": {"stg.memory": 600, "aug": {"name": "noise"}}, "all": 0.7351, "all_std": 0.0032,
     "many": 0.9, "many_std": 0.01, "medium": None, "few": 0.41, "few_std": 0.0, "ece": 0.123, "ece_std": 0.004,
     "nll": 1.23456, "nll_std": 0.01, "id": "aaaaaaaaaaaa,bbbbbbbbbbbb,cccccccccccc", "not_converged": 1,
     "reports": ["a", "b", "c"]},
    {"method": "STG <b>|x", "swept": {"stg.memory": 1.0, "aug": True}, "all": 0.76, "many": 0.8, "medium": 0.7,
     "few": 0.5, "ece": 0.05, "nll": 0.9, "id": "dddddddddddd", "not_converged": 0},
    {"method": "CE (stage 1)", "swept": {"stg.memory": 600, "aug": True}, "all": 0.5, "many": None, "medium": None,
     "few": None, "ece": None, "nll": None, "id": "eeeeeeeeeeee"},
]
FLAGGED = "cRT [v2] [not converged: 1 of 3]"


def read_terminal(table):
    """The rich table as printed: (header, body) of stripped cell texts."""
    console = Console(record=True, width=400, file=io.StringIO(), color_system=None)
    console.print(table)
    lines = [line for line in console.export_text().splitlines() if line[:1] in ("┃", "│")]
    cells = [[cell.strip() for cell in re.split("[┃│]", line)[1:-1]] for line in lines]
    return cells[0], cells[1:]


def read_markdown(text, code):
    """(header, body, alignment) of a Markdown table, unescaping `\\|` and dropping the backticks of id cells."""
    lines = text.splitlines()

    def split(line):
        return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", line)[1:-1]]

    body = [[cell[1:-1] if is_code else cell for cell, is_code in zip(split(line), code)] for line in lines[2:]]
    align = ["right" if cell.endswith(":") else "left" for cell in split(lines[1])]
    return split(lines[0]), body, align


class HtmlTable(HTMLParser):
    """Rows of (text, alignment, inside <code>) cells."""

    def __init__(self):
        super().__init__()
        self.rows, self.cell, self.code = [], None, False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = ["", dict(attrs)["style"].split(":")[1].strip(), False]
        elif tag == "code":
            self.cell[2] = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.rows[-1].append(tuple(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[0] += data


def read_html(text):
    parser = HtmlTable()
    parser.feed(text)
    parser.close()
    header, *body = parser.rows
    texts = [[c[0] for c in row] for row in body]
    return [c[0] for c in header], texts, [c[1] for c in header], [c[2] for c in body[0]]


@pytest.mark.parametrize("swept", [[], SWEPT])
def test_the_four_formats_agree_cell_for_cell(swept):
    cells = methods_cells(ROWS, swept)
    assert cells.header == ["Method", *swept, "All", "Many", "Medium", "Few", "ECE", "ECE (T)", "NLL", "NLL (T)", "id"]

    header, body, align = read_markdown(markdown(cells), cells.code)
    assert (header, body, align) == (cells.header, cells.body, cells.align)

    header, body, align, code = read_html(html(cells))
    assert (header, body, align, code) == (cells.header, cells.body, cells.align, cells.code)

    shown = for_terminal(cells)  # every column but the id, cell for cell
    assert shown.header == cells.header[:-1] and [line[:-1] for line in cells.body] == shown.body
    table = comparison_table(ROWS, "methods", swept)
    assert read_terminal(table) == (shown.header, shown.body)
    assert [column.justify for column in table.columns] == shown.align

    assert methods_cells(json.loads(json.dumps(ROWS)), swept) == cells  # the --json rows redraw the same table


def test_the_pivot_agrees_in_every_format():
    cells = wide_cells(ROWS, "aug", SWEPT)
    assert cells.header == ["Method", "stg.memory", "aug={'name': 'noise'}", "aug=True"]
    assert cells.body[0] == [FLAGGED.split(" [not")[0], "600", "73.5 ± 0.3 [not converged: 1 of 3]", "–"]
    assert read_markdown(markdown(cells), cells.code) == (cells.header, cells.body, cells.align)
    assert read_html(html(cells))[:3] == (cells.header, cells.body, cells.align)
    table = wide_rich_table(ROWS, "sweep", "aug", SWEPT)
    assert read_terminal(table) == (cells.header, cells.body)
    with pytest.raises(LtstgError, match="--columns seed: not a swept field"):
        wide_cells(ROWS, "seed", SWEPT)


def test_user_text_is_shown_literally_in_every_format():
    cells = methods_cells(ROWS, SWEPT)
    terminal = Console(record=True, width=400, file=io.StringIO(), color_system=None)
    terminal.print(comparison_table(ROWS, "[bold]run[/bold] x.yaml", SWEPT))
    printed = terminal.export_text()
    assert FLAGGED in printed and "STG <b>|x" in printed and "{'name': 'noise'}" in printed
    assert "[bold]run[/bold] x.yaml" in printed  # the title too: recipe paths are user text
    assert f"| {FLAGGED} |" in markdown(cells) and "| STG <b>\\|x |" in markdown(cells)
    page = html(cells)
    assert f">{FLAGGED}<" in page and "STG &lt;b&gt;|x" in page and "<b>" not in page
    assert "{&#x27;name&#x27;: &#x27;noise&#x27;}" in page


def test_nll_has_three_decimals_everywhere_and_no_std():
    cells = methods_cells(ROWS)
    nll = cells.header.index("NLL")
    assert [line[nll] for line in cells.body] == ["1.235", "0.900", "–"]
    assert [line[nll] for line in read_markdown(markdown(cells), cells.code)[1]] == ["1.235", "0.900", "–"]
    assert [line[nll] for line in read_html(html(cells))[1]] == ["1.235", "0.900", "–"]
    terminal = read_terminal(comparison_table(ROWS, "t"))
    assert [line[nll] for line in terminal[1]] == ["1.235", "0.900", "–"]


def test_markdown_is_what_the_readme_tables_were_made_with():
    assert markdown(methods_cells(ROWS[:1], ["stg.memory"])) == (
        "| Method | stg.memory | All | Many | Medium | Few | ECE | ECE (T) | NLL | NLL (T) | id |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n"
        "| cRT [v2] [not converged: 1 of 3] | 600 | 73.5 ± 0.3 | 90.0 ± 1.0 | – | 41.0 ± 0.0 | 12.3 ± 0.4 | – | 1.235 "
        "| – | `aaaaaaaaaaaa,bbbbbbbbbbbb,cccccccccccc` |\n"
    )


def test_a_selected_row_shows_what_each_seed_chose_on_validation():
    chosen = {**ROWS[1], "chosen": [{"augment.lam": 1, "augment.mu": "zero"}, {"augment.lam": 1.5, "augment.mu": "eq3"}],
              "ece_calibrated": 0.021, "nll_calibrated": 0.8}
    cells = methods_cells([chosen, ROWS[2]])
    column = cells.header.index("Chosen on val")
    assert [line[column] for line in cells.body] == ["lam=1, mu=zero / lam=1.5, mu=eq3", "–"]
    assert cells.body[0][cells.header.index("ECE (T)")] == "2.1" and cells.body[0][cells.header.index("NLL (T)")] == "0.800"
    assert "Chosen on val" not in methods_cells(ROWS).header  # only where a row selected
    on_edge = {**chosen, "edges": [{"augment.lam": "highest"}, {}]}
    assert methods_cells([on_edge]).body[0][column] == "lam=1 (highest), mu=zero / lam=1.5, mu=eq3"


def test_swept_values_keep_their_text_so_1_and_1_0_stay_apart():
    rows = [{**ROWS[1], "swept": {"lam": value}} for value in (1.0, 1, 0.123456)]
    cells = for_terminal(methods_cells(rows, ["lam"]))
    assert [line[1] for line in cells.body] == ["1.0", "1", "0.123456"]
    assert [line[1] for line in read_terminal(comparison_table(rows, "t", ["lam"]))[1]] == ["1.0", "1", "0.123456"]


def test_every_candidate_is_listed_with_its_score_and_how_it_came_in():
    record = lambda lam, score, chosen=False, extended=False: {  # noqa: E731
        "values": {"lr": 0.001, "augment.lam": lam}, "val_mean_class": score, "classifier": f"{lam}".ljust(64, "a"),
        "chosen": chosen, "extended": extended}
    rows = [{"method": "cRT+STG", "seeds": [0, 1],
             "candidates": [[record(0.5, 0.801), record(0.25, 0.8125, chosen=True, extended=True)],
                            [record(0.5, 0.79, chosen=True), record(0.25, 0.78)]]},
            {"method": "CE", "seeds": [0, 1]}]  # selected nothing: not listed
    cells = candidates_cells(rows, "val_mean_class", 6)
    assert cells.body == [["cRT+STG", "0", "lr=0.001, lam=0.5", "80.1", "", "0.5aaa"],
                          ["cRT+STG", "0", "lr=0.001, lam=0.25", "81.2", "chosen, extended", "0.25aa"],
                          ["cRT+STG", "1", "lr=0.001, lam=0.5", "79.0", "chosen", "0.5aaa"],
                          ["cRT+STG", "1", "lr=0.001, lam=0.25", "78.0", "", "0.25aa"]]
    assert "<code>0.25aa</code>" in html(cells)
