"""`ltstg report` and `ltstg run --report`: one HTML file whose every section is there and every image decodes."""
import base64
import io
import json
import re
from html.parser import HTMLParser

import pytest
from PIL import Image
from typer.testing import CliRunner

from ltstg.cli import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_thread")

SECTIONS = ["Data set", "Training curves", "Methods", "Per-class accuracy against training count",
            "Classifier weight norms per class", "Reliability diagrams", "t-SNE of the features"]


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.headings, self.images, self.cells, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        self._in = tag
        if tag == "img":
            self.images.append(dict(attrs)["src"])

    def handle_endtag(self, tag):
        self._in = None

    def handle_data(self, data):
        if self._in == "h2":
            self.headings.append(data)
        elif self._in == "td":
            self.cells.append(data)


def parse(path):
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    for src in page.images:
        assert src.startswith("data:image/png;base64,")  # embedded: no file or network reference
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as image:
            image.load()
            assert image.size[0] >= 200 and image.size[1] >= 100
    return page


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from tests.conftest import TINY, TINY_METHODS

    path = tmp_path_factory.mktemp("report") / "tiny.yaml"
    path.write_text(TINY + TINY_METHODS)
    return path


def test_run_report_has_every_section_and_the_seeds(recipe, tmp_path):
    out = tmp_path / "run.html"
    result = runner.invoke(app, ["--store", str(tmp_path / "s"), "run", str(recipe), "--seeds", "0", "--seeds", "1",
                                 "--vary-from", "retrain", "--report", str(out)])
    assert result.exit_code == 0, result.output
    page = parse(out)
    for section in SECTIONS:
        assert section in page.headings, page.headings
    assert any(h.startswith("What the STG learned") for h in page.headings)
    assert len(page.images) == len(SECTIONS) + 1 - 1  # every section but the table has one picture, plus KL
    assert any("±" in cell for cell in page.cells)  # two seeds: mean ± std
    assert "ltstg run" in out.read_text()


def test_report_command_groups_seeds_and_needs_one_features_artifact(recipe, tmp_path):
    store = tmp_path / "s"
    assert runner.invoke(app, ["--store", str(store), "run", str(recipe), "--seeds", "0", "--seeds", "1",
                               "--vary-from", "retrain"]).exit_code == 0
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["--store", str(store), "report", "--out", str(out), "--no-tsne"])
    assert result.exit_code == 0, result.output
    page = parse(out)
    assert "t-SNE of the features" not in page.headings and "Methods" in page.headings
    names = [cell.split(" [not converged")[0] for cell in page.cells]  # tiny runs don't converge: flagged rows
    methods = [name for name in names if name in ("CE (stage 1)", "cRT", "cRT+STG")]
    assert sorted(methods) == ["CE (stage 1)", "cRT", "cRT+STG"]  # two seeds each, one row each
    empty = runner.invoke(app, ["--store", str(tmp_path / "none"), "report"])
    assert empty.exit_code == 2 and "no features artifact" in empty.stderr


def test_a_section_that_cannot_be_drawn_is_said_not_dropped(recipe, tmp_path, monkeypatch):
    from ltstg.errors import LtstgError
    from ltstg.inspect import kl

    store = tmp_path / "s"
    assert runner.invoke(app, ["--store", str(store), "run", str(recipe)]).exit_code == 0

    def refuse(*args, **kwargs):
        raise LtstgError("class truck has 1 training image")

    monkeypatch.setattr(kl, "kl_report", refuse)
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["--store", str(store), "report", "--out", str(out), "--no-tsne"])
    assert result.exit_code == 0, result.output
    assert "the KL section is left out: class truck has 1 training image" in result.stderr
    page = parse(out)
    assert "Left out" in page.headings and not any(h.startswith("What the STG learned") for h in page.headings)


def test_the_run_report_lists_every_candidate_with_its_validation_score(tmp_path):
    from tests.conftest import TINY

    recipe = tmp_path / "select.yaml"
    recipe.write_text(TINY + "methods:\n  cRT: {classifier: crt, select: {lr: [1.0e-3, 1.0e-2]}}\n"
                      "  cRT+STG: {augment: {name: stg, lam: 1.5}}\n")
    out = tmp_path / "run.html"
    result = runner.invoke(app, ["--store", str(tmp_path / "s"), "--json", "run", str(recipe), "--seeds", "0",
                                 "--seeds", "1", "--vary-from", "retrain", "--report", str(out)])
    assert result.exit_code == 0, result.output
    page = parse(out)
    assert "Candidates on the validation split" in page.headings
    section = out.read_text().split("<h2>Candidates on the validation split</h2>")[1].split("</section>")[0]
    lines = [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in section.split("<tr>")[2:]]  # past the header
    listed = [cells[:5] for cells in lines]
    assert [(method, seed, values) for method, seed, values, _, _ in listed] == [
        ("cRT", "0", "lr=0.001"), ("cRT", "0", "lr=0.01"), ("cRT", "1", "lr=0.001"), ("cRT", "1", "lr=0.01")]
    rows = {row["method"]: row for row in json.loads(result.stdout)["rows"]}
    for seed, tried in zip(rows["cRT"]["seeds"], rows["cRT"]["candidates"]):
        shown = [line for line in listed if line[1] == str(seed)]
        assert [line[3] for line in shown] == [f"{100 * record['val_mean_class']:.1f}" for record in tried]
        assert [line[4] for line in shown] == ["chosen" if record["chosen"] else "" for record in tried]
    assert all(cells[5].startswith("<code>") for cells in lines)  # each candidate's classifier id


SHIFTED = """
methods:
  cRT: {classifier: crt}
  cRT (shifted): {classifier: crt, bn_shift: true, sampling: class_aware}
"""


def test_34_11_the_report_includes_rows_trained_on_batchnorm_shifted_features(tmp_path):
    """Kang's and MiSLAS's rows train on a shifted variant of the features (an artifact of its own); `report`
    takes the features and their variants as one, and evaluates each classifier on the features it trained on."""
    from tests.conftest import TINY

    recipe = tmp_path / "shifted.yaml"
    recipe.write_text(TINY + SHIFTED)
    store = tmp_path / "s"
    ran = runner.invoke(app, ["--store", str(store), "--json", "run", str(recipe)])
    assert ran.exit_code == 0, ran.output
    by_run = {row["method"]: row["all"] for row in json.loads(ran.stdout)["rows"]}
    reported = runner.invoke(app, ["--store", str(store), "--json", "report", "--out", str(tmp_path / "r.html"),
                                   "--no-tsne"])
    assert reported.exit_code == 0, reported.output
    rows = {row["method"]: row["all"] for row in json.loads(reported.stdout)["rows"]}
    shifted_label = next(label for label in rows if "bn_shift True" in label)  # labelled by what differs
    assert rows[shifted_label] == by_run["cRT (shifted)"]  # scored on the shifted features, as the run scored it
    assert sorted(rows.values()) == sorted(by_run.values()) and len(rows) == 2
    from ltstg.store import Store

    shifted = [c.id[:12] for c in Store(store).list("classifier") if c.meta["settings"].get("bn_shift")]
    alone = runner.invoke(app, ["--store", str(store), "--json", "report", *shifted, "--out", str(tmp_path / "s.html"),
                                "--no-tsne"])
    assert alone.exit_code == 0, alone.output
    assert [r["all"] for r in json.loads(alone.stdout)["rows"]] == [by_run["cRT (shifted)"]]


def test_34_12_seeds_varied_from_different_stages_make_separate_rows(recipe, tmp_path):
    """`--vary-from retrain` and `--vary-from fit-stg` in one store: the STG rows split by how their seeds were
    varied; the classifier of seed 0 (every stage at seed 0) belongs to both, and no row counts a seed twice."""
    store = tmp_path / "s"
    for vary in ("retrain", "fit-stg"):
        assert runner.invoke(app, ["--store", str(store), "run", str(recipe), "--seeds", "0", "--seeds", "1",
                                   "--methods", "cRT+STG", "--vary-from", vary]).exit_code == 0
    reported = runner.invoke(app, ["--store", str(store), "--json", "report", "--out", str(tmp_path / "r.html"),
                                   "--no-tsne"])
    assert reported.exit_code == 0, reported.output
    rows = {row["method"]: row["seeds"] for row in json.loads(reported.stdout)["rows"]}
    assert rows == {"cRT+STG (seeds from fit-stg)": [0, 1], "cRT+STG (seeds from retrain)": [0, 1]}, rows
    one = runner.invoke(app, ["--store", str(store), "--json", "run", str(recipe), "--seeds", "0", "--seeds", "1",
                              "--methods", "cRT+STG", "--vary-from", "retrain"])
    by_run = json.loads(one.stdout)["rows"][0]
    retrain = next(r for r in json.loads(reported.stdout)["rows"] if r["method"].endswith("(seeds from retrain)"))
    from ltstg.store import Store

    classifier_of = lambda report: Store(store).get(report).parents[0]  # noqa: E731
    assert [classifier_of(r) for r in by_run["reports"]] == [classifier_of(r) for r in retrain["reports"]]
