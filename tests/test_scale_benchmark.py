"""benchmarks/scale.py, its small shape in one process: every stage-2-4 phase runs at many classes."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_scale_benchmark_runs_every_phase_of_its_small_shape(tmp_path):
    """300 classes: fit-stg with `memory: auto`'s recipe settings, cRT with every augmenter, a sparse report,
    and a t-SNE of fewer points than classes (issue 24)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "scale.py"
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(script), "--shapes", "small", "--steps", "1", "--tsne-points", "100",
                           "--in-process", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = {row["phase"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"write", "load", "fit-stg", "eval", "report"} | {
        f"retrain-{name}" for name in ("none", "stg", "isda", "noise", "dropout")}
    assert rows["fit-stg"]["anchor_share"] > 0.9 and rows["fit-stg"]["epoch_seconds"] > 0
    assert rows["eval"]["size"] < 1024 * 1024  # a sparse confusion: no 500 x 500 matrix
    assert rows["report"]["tsne_classes_shown"] == 20  # 100 points, 5 per class
