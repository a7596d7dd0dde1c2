"""The results' footprint (issue 29, item 9): compact figures, the tracked tree within its budget,
a measured rerun estimate within its budget, and checkpoints only where a shipped result reloads them."""

import base64
import io
import json
import subprocess

import numpy as np
import pytest
from PIL import Image

from dmlbench.bench.footprint import kind_of, tracked_files, tracked_sizes
from dmlbench.fileio import compact_png
from dmlbench.paths import REPO_ROOT
from dmlbench.study.footprint import RERUN_BUDGET, TRACKED_BUDGET, compact_folder, compact_notebook


def plot_png() -> bytes:
    """A real matplotlib figure as the notebooks hold them: lines, markers, text, antialiasing."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 3), dpi=80)
    rng = np.random.default_rng(0)
    for i in range(8):
        ax.plot(np.cumsum(rng.normal(size=30)), marker="o", label=f"loss {i}")
    ax.scatter(*rng.normal(size=(2, 200)), s=4, c=rng.integers(10, size=200), cmap="tab10")
    ax.legend(fontsize=6)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def test_compact_png_is_smaller_close_to_the_original_and_idempotent():
    raw = plot_png()
    small = compact_png(raw)
    assert len(small) < 0.7 * len(raw)
    assert compact_png(small) == small  # compacting twice is compacting once
    before = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=int)
    after = np.asarray(Image.open(io.BytesIO(small)).convert("RGB"), dtype=int)
    assert Image.open(io.BytesIO(small)).mode == "P" and before.shape == after.shape
    assert (np.abs(before - after).max(axis=2) <= 40).mean() > 0.99  # the same picture to the eye


def test_compact_notebook_rewrites_images_only_and_once(tmp_path):
    png = base64.b64encode(plot_png()).decode()
    nb = {"cells": [{"cell_type": "code", "id": "a", "metadata": {}, "source": ["x = 1\n"], "execution_count": 1,
                     "outputs": [{"output_type": "display_data", "metadata": {},
                                  "data": {"image/png": png, "text/plain": ["<Figure>"]}},
                                 {"output_type": "display_data", "metadata": {},
                                  "data": {"text/html": [f'<p>t</p><img src="data:image/png;base64,{png}" alt="x">']}},
                                 {"output_type": "stream", "name": "stdout", "text": ["MAP@R 0.8123\n"]}]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "run.ipynb"
    path.write_text(json.dumps(nb, indent=1))
    before, after = compact_notebook(path)
    assert after < before
    once = path.read_bytes()
    assert compact_notebook(path) == (len(once), len(once)) and path.read_bytes() == once
    outputs = json.loads(once)["cells"][0]["outputs"]
    assert Image.open(io.BytesIO(base64.b64decode(outputs[0]["data"]["image/png"]))).mode == "P"
    assert outputs[0]["data"]["text/plain"] == ["<Figure>"] and outputs[2]["text"] == ["MAP@R 0.8123\n"]
    html = outputs[1]["data"]["text/html"]
    assert isinstance(html, list) and html[0].startswith("<p>t</p><img src=\"data:image/png;base64,")  # its form kept
    assert compact_folder(tmp_path)[0] == 0  # nothing left to compact


def test_a_compact_notebook_written_by_nbformat_is_left_byte_for_byte(tmp_path):
    """A notebook with nothing to compact is not rewritten: make all's compaction step must not change
    the layout of a report notebook that the report build wrote (HTML kept as a list of lines)."""
    import nbformat

    png = base64.b64encode(compact_png(plot_png())).decode()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/html": f'<table>\n<tr><td>1</td></tr>\n</table><img src="data:image/png;base64,{png}">\n'})])])
    path = tmp_path / "report.ipynb"
    path.write_text(nbformat.writes(nb) + "\n")
    before = path.read_bytes()
    assert compact_notebook(path) == (len(before), len(before)) and path.read_bytes() == before


def test_the_tracked_tree_is_within_its_budget():
    sizes = tracked_sizes()
    assert sizes["total"] <= TRACKED_BUDGET, sizes


def test_every_shipped_figure_is_compact():
    """Executed notebooks and figure files under results/ hold indexed-colour PNGs only."""
    loose = []
    for path in tracked_files():
        if path.parts[0] != "results":
            continue
        if path.suffix == ".png" and Image.open(REPO_ROOT / path).mode != "P":
            loose.append(str(path))
        elif path.suffix == ".ipynb":
            text = (REPO_ROOT / path).read_text(encoding="utf-8")
            if compact_notebook_would_change(REPO_ROOT / path, text):
                loose.append(str(path))
    assert loose == [], f"{len(loose)} shipped files with full-colour PNGs, e.g. {loose[:3]}"


def compact_notebook_would_change(path, text) -> bool:
    nb = json.loads(text)
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            if png and Image.open(io.BytesIO(base64.b64decode(png if isinstance(png, str) else "".join(png)))).mode != "P":
                return True
    return False


def test_a_measured_rerun_adds_little_to_the_history():
    """results/bench/footprint.json, written by 'dmlbench bench footprint --rerun N': shipped cells
    executed again gave the same test metrics, and the extrapolated history growth is within budget."""
    recorded = json.loads((REPO_ROOT / "results" / "bench" / "footprint.json").read_text())
    rerun = recorded["rerun"]
    assert rerun["sample"] and all(row["same_test_metrics"] for row in rerun["sample"])
    assert rerun["total"] <= RERUN_BUDGET


def test_checkpoints_ship_only_where_the_shipped_reports_reload_them():
    """Every tracked checkpoint is one a shipped report reloads (its t-SNE maps, retrieval grids),
    and every one the reports reload is tracked: their up-close pictures stand on a fresh clone."""
    tracked = {path.parent.name for path in tracked_files() if path.name == "checkpoint.pt"}
    reloaded = set()
    for table in (REPO_ROOT / "results").glob("**/tables/reloaded_runs.csv"):
        reloaded |= {line.split(",")[-1] for line in table.read_text().splitlines()[1:] if line}
    assert reloaded and tracked == reloaded
    for report in (REPO_ROOT / "results").glob("**/report.html"):
        assert "cannot be reloaded" not in report.read_text(encoding="utf-8"), report


def test_checkpoints_are_ignored_by_git_unless_added_on_purpose():
    ignored = subprocess.run(["git", "-C", str(REPO_ROOT), "check-ignore", "-q", "--no-index",
                              "results/runs/some-new-run/checkpoint.pt"])
    assert ignored.returncode == 0
    assert kind_of(__import__("pathlib").Path("results/tuned/runs/x/checkpoint.pt")) == "checkpoints"


def test_the_gpu_check_travels_in_at_most_two_calls():
    """With today's tree and the parts the last prepared check measured (results/bench/gpu-dry.json),
    the GPU check's plan fits in one or two device calls of 64 MiB."""
    from dmlbench.bench.gpucheck import plan_calls

    recorded = json.loads((REPO_ROOT / "results" / "bench" / "gpu-dry.json").read_text())["plan"]
    tree = tracked_sizes()["total"]
    calls = plan_calls(tree, recorded["part_bytes"], limit=recorded["limit_bytes"])
    assert 1 <= len(calls) <= 2 and all(call["bytes"] <= recorded["limit_bytes"] for call in calls)
