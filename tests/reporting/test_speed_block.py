"""The README's cell-cost block is written from the bench files, and says so where one is missing."""

import pandas as pd

from dmlbench.reporting.speed import CELL_BEGIN, CELL_END, render_cell_block


def test_the_block_is_written_from_the_files(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    assert "has not been measured yet" in render_cell_block(tmp_path)
    steps = pd.DataFrame([
        {"path": p, "work": w, "ms_per_step": ms, "speedup_vs_fp32_channels_last": x, "under_load": False}
        for p, w, ms, x in [("eager fp32 channels-last", "network only", 20.0, 1.0),
                            ("eager fp32 channels-last", "triplet + semi-hard", 22.0, 1.0),
                            ("eager bf16 channels-last", "network only", 12.5, 1.6),
                            ("eager bf16 channels-last", "triplet + semi-hard", 14.0, 1.57)]])
    steps.to_csv(bench / "cell-steps-cpu.csv", index=False)
    parts = ["papermill", "kernel start, shutdown, notebook writes", "imports and set-up", "training steps",
             "validation passes"]
    cells = pd.DataFrame([{"precision": "auto", "trained_in": "bf16", "part": part, "seconds": s,
                           "share_of_papermill": s / 40.0, "of_earlier_runs_median": 40.0 / 67.0 if part == "papermill"
                           else float("nan"), "under_load": True} for part, s in zip(parts, [40.0, 2.0, 3.0, 30.0, 2.5])])
    cells.to_csv(bench / "cell-breakdown-cpu.csv", index=False)
    (bench / "precision-pairs-cpu.txt").write_text("title line\nd: 3 cells x 4 seeds; 0 of 6 differences beyond seed noise\n"
                                                    "d map@r: Kendall's tau of the 3 cells' means 0.900; x\n  table\n")
    pd.DataFrame([{"dataset": "d"}]).to_csv(bench / "precision-pairs-cpu.csv", index=False)
    block = render_cell_block(tmp_path)
    assert block.startswith(CELL_BEGIN) and block.endswith(CELL_END)
    assert "eager bf16 channels-last 14.0 ms (x1.57; network alone 12.5 ms)" in block
    assert "(measured under load): precision auto (trained in bf16): 40.0 s of papermill time, 60% of the earlier" in block
    assert "training steps 75% of it" in block
    assert "0 of 6 differences beyond seed noise; d map@r: Kendall's tau of the 3 cells' means 0.900; x." in block
    assert len(block.splitlines()) == 3  # one paragraph: the README stays short
