"""README numbers come from results files: its results block is what results/summary.json renders."""

import json

from dmlbench.paths import REPO_ROOT
from dmlbench.readme import BEGIN, END, check_readme, render_block


def test_readme_results_block_matches_committed_results():
    assert (REPO_ROOT / "results" / "summary.json").is_file(), "run 'make all' to produce results/"
    assert check_readme() is None


def test_committed_summary_covers_every_cell_of_the_default_study():
    summary = json.loads((REPO_ROOT / "results" / "summary.json").read_text())
    assert summary["study"] == "default"
    assert summary["done"] == summary["cells"] and summary["failed"] == 0 and summary["missing"] == 0
    assert len(summary["table"]) == summary["cells"] // summary["seeds"]


def test_render_block_reads_numbers_from_the_summary():
    summary = {"study": "s", "dataset": "d", "done": 1, "cells": 1, "seeds": 1,
               "table": [{"loss": "l", "miner": "m", "recall@1": 0.12345, "recall@2": 0.2, "recall@4": 0.4,
                          "recall@8": 0.8, "map@r": 0.05, "r_precision": 0.06, "nmi": 0.07}],
               "timing": {"cells_wall_s": 120.0, "cells_timed": 1, "cells_span_s": 130.0},
               "machine": {"cpu": "cpu x", "cpu_count": 2, "device": "cpu"}}
    block = render_block(summary)
    assert block.startswith(BEGIN) and block.endswith(END)
    assert "| l | m | 0.1235 |" in block and "2.2 min from the first" in block and "2.0 min of papermill" in block
    assert "cpu x (2 cores" in block
    assert "each cell on 1 thread(s)" in render_block(dict(summary, machine=dict(summary["machine"], torch_threads=1)))
    assert "plus 42 s for the report" in render_block(dict(summary, report_wall_s=42.0))


def test_eval_block_reads_the_benchmark_files():
    import pandas as pd

    from dmlbench.readme import EVAL_BEGIN, EVAL_END, render_eval_block

    table = pd.DataFrame([{"size": "sop", "n": 60502, "dim": 512, "classes": 11316, "evaluator": "dmlbench",
                           "retrieval_s": 31.96, "nmi_s": 55.0, "total_s": 86.96, "peak_rss_gb": 1.234,
                           "max_metric_diff": 0.0}])
    block = render_eval_block({"cpu": table})
    assert block.startswith(EVAL_BEGIN) and block.endswith(EVAL_END)
    assert "| sop (60,502 x 512, 11,316 classes) | dmlbench | 32.0 s | 55.0 s | 87.0 s | 1.23 GB | 0 |" in block
    assert "results/bench/eval-cpu.txt" in block
    assert "No evaluation benchmark" in render_eval_block({})


def test_train_block_and_study_estimates_come_from_the_files():
    import pandas as pd

    from dmlbench.estimate import SPLIT_SIZES, estimate
    from dmlbench.readme import TRAIN_BEGIN, TRAIN_END, render_train_block
    from dmlbench.study import load_study

    study = load_study(REPO_ROOT / "studies" / "cub.yaml", check_networks=False)  # no weights needed
    work = estimate(study, 1000.0).iloc[0]
    train_images = SPLIT_SIZES["cub"][0] - round(0.2 * SPLIT_SIZES["cub"][0])  # validation classes held out
    assert work["runs"] == 36 and work["train_images"] == 36 * 150 * train_images
    assert work["eval_images"] == 36 * (151 * round(0.2 * SPLIT_SIZES["cub"][0]) + SPLIT_SIZES["cub"][1])
    assert abs(work["hours"] - (work["train_images"] + work["eval_images"] / 3) / 1000 / 3600) < 1e-9

    table = pd.DataFrame({"part": ["data pipeline alone", "model step alone", "full step"],
                          "images_per_s": [9000.0, 2500.0, 2250.0], "ms_per_batch": [12.4, 44.8, 49.8],
                          "of_model_step": [3.6, 1.0, 0.9], "model": "resnet50", "image_size": 224, "batch": "56x2",
                          "workers": 15, "torch_compile": False})
    block = render_train_block({"cuda": table}, {"cub": work.to_dict()})
    assert block.startswith(TRAIN_BEGIN) and block.endswith(TRAIN_END)
    assert "| full step | 2,250.0 | 49.8 | 0.90x |" in block
    assert f"| `studies/cub.yaml` | 36 | {work['train_images']:,} |" in block
    assert f"| {work['hours']:,.1f} | {work['hours'] * 1000 / 2250:,.1f} |" in block  # hours at the measured rate
    other = render_train_block({"cpu": table.assign(model="resnet18")}, {"cub": work.to_dict()})
    assert "hours on" not in other  # a measurement at other settings gives no estimate
