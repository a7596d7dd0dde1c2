"""README numbers come from results files: each generated block (the results block in README.md, the
benchmark and GPU-check blocks in docs/) is what its results files render; the README stays short and
its links and the docs pages' links resolve."""

import json

from dmlbench.paths import REPO_ROOT
from dmlbench.reporting.readme import BEGIN, END, check_readme, render_block


def test_readme_results_block_matches_committed_results():
    assert (REPO_ROOT / "results" / "summary.json").is_file(), "run 'make all' to produce results/"
    assert check_readme() is None


def test_committed_summary_covers_every_cell_of_the_default_study():
    summary = json.loads((REPO_ROOT / "results" / "summary.json").read_text())
    assert summary["study"] == "default"
    assert summary["done"] == summary["cells"] and summary["failed"] == 0 and summary["missing"] == 0
    from dmlbench.study.cells import load_study

    study = load_study(REPO_ROOT / "studies" / "default.yaml", check_networks=False)
    cells = {(c.config.dataset, c.config.loss, c.config.miner) for c in study.cells}
    shown = {(dataset, row["loss"], row["miner"]) for dataset, rows in summary["tables"].items() for row in rows}
    assert shown == cells and sum(len(rows) for rows in summary["tables"].values()) == len(cells)
    assert summary["table"] == summary["tables"][summary["dataset"]]


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

    from dmlbench.reporting.readme import EVAL_BEGIN, EVAL_END, render_eval_block

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

    from dmlbench.study.estimate import SPLIT_SIZES, estimate
    from dmlbench.reporting.readme import TRAIN_BEGIN, TRAIN_END, render_train_block
    from dmlbench.study.cells import load_study

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
    assert "meets the goal of 0.8" in block and "not measured yet" not in block
    slow = render_train_block({"cuda": table.assign(of_model_step=[3.6, 1.0, 0.5])}, {"cub": work.to_dict()})
    assert "runs at 0.50 of the model step alone: it misses the goal" in slow
    assert "The CUDA throughput is not measured yet" in other


def _dry_report(diff=0.0):
    tail = "....\n=== short test summary info ===\n78 passed, 79 skipped, 782 deselected in 5.03s\n"
    return {"dry": True, "seconds": 49.9, "facts": {"date": "2026-12-01 10:38:10 UTC"},
            "imports": {"a": {}, "b": {}},
            "plan": {"wheels": 33, "wheel_bytes": 22.6 * 2**20, "part_bytes": {"part1": 11.8 * 2**20},
                     "data_bytes": 14.9 * 2**20, "tree_bytes": 43.5 * 2**20, "limit_bytes": 64 * 2**20,
                     "calls": [{"bytes": 55.2 * 2**20}, {"bytes": 58.4 * 2**20}]},
            "steps": {"tests": {"rc": 0, "seconds": 7.3, "tail": tail}, "cells": {"rc": 0, "seconds": 35.8, "tail": ""}}}


def _cells(device, diff):
    import pandas as pd

    return pd.DataFrame([{"loss": "triplet", "miner": "semi-hard", "seed": 0, "notebook_s": 30.0, "train_s": 4.0,
                          "cpu_notebook_s": 59.2, "cpu_train_s": 11.3, "recall@1": 0.9, "cpu_recall@1": 0.9 - diff,
                          "diff_recall@1": diff, "map@r": 0.34, "cpu_map@r": 0.34, "diff_map@r": 0.0, "nmi": 0.32,
                          "cpu_nmi": 0.32, "diff_nmi": 0.0}])


def test_gpu_block_says_what_is_prepared_and_what_is_not_measured():
    from dmlbench.reporting.readme import CUDA_FILES, GPU_BEGIN, GPU_END, render_gpu_block

    block = render_gpu_block({"gpu-dry": _dry_report()}, {"cpu": _cells("cpu", 0.0)}, {"train-cpu", "cells-cpu"})
    assert block.startswith(GPU_BEGIN) and block.endswith(GPU_END)
    assert "prepared, not yet measured" in block and "2 transfers to the GPU machine of 55.2 and 58.4 MiB (at most 64 each)" in block
    assert "the tests: 78 passed, 79 skipped, 782 deselected" in block
    assert "reproduced their Recall@1, MAP@R and NMI exactly" in block
    assert all(f"(`{name}`)" in block for name in CUDA_FILES)
    differing = render_gpu_block({"gpu-dry": _dry_report()}, {"cpu": _cells("cpu", 0.01)}, set())
    assert "did NOT reproduce" in differing
    # a plan that cannot travel: the block says so, with the plan's reason, and plans no call
    stuck = _dry_report()
    stuck["plan"] |= {"calls": [], "error": "gpu-check: the repository's files (56.0 MiB, carried by every call) "
                                            "leave 8.0 MiB ..."}
    block = render_gpu_block({"gpu-dry": stuck}, {"cpu": _cells("cpu", 0.0)}, set())
    assert "the check cannot travel as it stands (the repository's files (56.0 MiB" in block
    assert "transfers to the GPU machine of" not in block and "transfer to the GPU machine of" not in block


def test_gpu_block_shows_the_measured_check_and_the_cuda_cells():
    from dmlbench.reporting.readme import render_gpu_block

    report = {"dry": False, "seconds": 400.0, "steps": {"tests": {"rc": 0, "seconds": 80.0, "tail": "9 passed in 70.00s"},
                                                         "train": {"rc": "stopped after 90 s", "seconds": 90.0, "tail": ""}},
              "facts": {"gpu": {"name": "NVIDIA H200", "memory_gib": 139.8, "nccl": "2.27.3"}, "cpu_count": 16,
                        "python": "3.12.3", "torch": "2.11.0", "torch_cuda": "13.0", "date": "d",
                        "nvidia_smi": {"driver_version": "580.159.03"}}}
    present = {"train-cuda", "train-cuda-compile", "eval-cuda", "losses-cuda", "miners-cuda", "cells-cuda"}
    block = render_gpu_block({"gpu-check-part1": report, "gpu-dry": _dry_report()}, {"cuda": _cells("cuda", 0.02)},
                             present)
    assert "ran on NVIDIA H200 (139.8 GiB, driver 580.159.03), 16 cores" in block
    assert "| tests | ok: 9 passed | 80.0 |" in block and "| train | FAILED (stopped after 90 s) | 90.0 |" in block
    assert "| triplet + semi-hard, seed 0 | 30.0 (59.2) | 4.0 (11.3) | 0.3400 (0.3400) | 0.9000 (0.8800) |" in block
    with_dataset = _cells("cuda", 0.02).assign(dataset="han-typefaces")  # the cells' tables name their dataset
    block = render_gpu_block({"gpu-check-part1": report}, {"cuda": with_dataset}, present)
    assert "| han-typefaces: triplet + semi-hard, seed 0 | 30.0 (59.2) |" in block
    assert "prepared, not yet measured" not in block and "not measured yet" not in block


def test_estimate_uses_the_measured_cuda_throughput(tmp_path):
    import pandas as pd
    import pytest

    from dmlbench.errors import ConfigError
    from dmlbench.study.estimate import measured_rate

    with pytest.raises(ConfigError, match="no CUDA throughput has been measured yet"):
        measured_rate(tmp_path)
    (tmp_path / "bench").mkdir()
    pd.DataFrame({"part": ["model step alone", "full step"], "images_per_s": [2500.0, 2250.0], "model": "resnet50",
                  "image_size": 224, "batch": "56x2"}).to_csv(tmp_path / "bench" / "train-cuda.csv", index=False)
    rate, source = measured_rate(tmp_path)
    assert rate == 2250.0 and "train-cuda.csv" in source and "batch 56x2" in source


def test_estimate_without_a_number_names_what_is_missing(capsys):
    from dmlbench.cli import main

    if (REPO_ROOT / "results" / "bench" / "train-cuda.csv").is_file():
        assert main(["study", str(REPO_ROOT / "studies" / "cub.yaml"), "--estimate"]) == 0
        assert "the full step measured on CUDA" in capsys.readouterr().out
    else:
        assert main(["study", str(REPO_ROOT / "studies" / "cub.yaml"), "--estimate"]) != 0
        assert "no CUDA throughput has been measured yet" in capsys.readouterr().err


def test_eval_block_shows_gpu_memory_for_cuda_files_only():
    import pandas as pd

    from dmlbench.reporting.readme import render_eval_block

    row = {"size": "cub", "n": 5924, "dim": 512, "classes": 100, "evaluator": "dmlbench", "retrieval_s": 0.1,
           "nmi_s": 0.2, "total_s": 0.3, "peak_rss_gb": 1.0, "max_metric_diff": 0.0}
    block = render_eval_block({"cpu": pd.DataFrame([row]), "cuda": pd.DataFrame([row | {"peak_gpu_gb": 2.5}])})
    cpu_part, cuda_part = block.split("On `cuda`")
    assert "peak GPU memory" not in cpu_part and "| 1.00 GB | 2.50 GB | 0 |" in cuda_part
    assert "not measured yet" not in block and "CUDA evaluation times: not measured yet" in render_eval_block({})


# The README is what a user needs first; the rest lives in docs/ pages linked from it.
README_MAX_LINES = 150
DOCS = REPO_ROOT / "docs"


def _pages():
    return [REPO_ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def _prose(path):
    """The page without its fenced code blocks (a link or path in code is no claim about the tree)."""
    import re

    return re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def _anchors(path):
    """GitHub's anchors of a page's headings."""
    import re

    heads = re.findall(r"^#{1,6} (.+)$", _prose(path), re.M)
    return {re.sub(r"[^\w\- ]", "", head.strip().lower()).replace(" ", "-") for head in heads}


def test_readme_stays_short():
    lines = (REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move detail to a docs/ page"


def test_every_relative_link_of_the_readme_and_the_docs_resolves():
    import re

    broken = []
    for page in _pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file).resolve() if file else page
            if not linked.is_file():
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
                broken.append(f"{page.relative_to(REPO_ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_links_every_docs_page():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    pages = sorted(DOCS.glob("*.md"))
    assert pages and all(f"](docs/{page.name}" in text for page in pages), \
        [page.name for page in pages if f"](docs/{page.name}" not in text]


def _worked_examples(text):
    """Paths a page introduces as the name of the code block that follows ("Its module, `x.py`:" then
    a fenced block): a file the reader writes, shown in full, not a claim about the tree."""
    import re

    return set(re.findall(r"`([^`\s]+)`:\n+```", text))


def test_code_paths_named_in_the_readme_and_the_docs_exist():
    """`dmlbench/training/loop.py`, `dmlbench/{config,criterion}.py`, `dmlbench/losses/`: each is in the tree."""
    import re

    missing = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        for path in set(re.findall(r"\bdmlbench/[\w/{},.]*[\w}/]", text)) - _worked_examples(text):
            brace = re.search(r"\{([^}]*)\}", path)
            expanded = [path[:brace.start()] + part + path[brace.end():] for part in brace.group(1).split(",")] \
                if brace else [path]
            missing += [f"{page.relative_to(REPO_ROOT)}: {one}" for one in expanded if not (REPO_ROOT / one).exists()]
    assert not missing, "\n".join(missing)


def test_each_generated_block_lives_in_its_own_page_only():
    from dmlbench.reporting.readme import (BLOCK_FILES, EVAL_BEGIN, GPU_BEGIN, INDEX_BEGIN, INDEX_STUDY_BEGIN,
                                           INDEX_TABLE_BEGIN, TRAIN_BEGIN, TUNED_BEGIN, TUNED_TABLE_BEGIN)
    from dmlbench.reporting.field import FIELD_BEGIN
    from dmlbench.reporting.index_catalogue import CATALOGUE_BEGIN
    from dmlbench.reporting.speed import CELL_BEGIN

    begins = {"index-catalogue": CATALOGUE_BEGIN, "results": BEGIN, "eval-bench": EVAL_BEGIN, "train-bench": TRAIN_BEGIN, "gpu-check": GPU_BEGIN,
              "tuned": TUNED_BEGIN, "tuned-table": TUNED_TABLE_BEGIN, "index-bench": INDEX_BEGIN,
              "index-bench-table": INDEX_TABLE_BEGIN, "index-study": INDEX_STUDY_BEGIN, "cell-bench": CELL_BEGIN,
              "field-agreement": FIELD_BEGIN}
    assert BLOCK_FILES["results"] == "README.md" and set(BLOCK_FILES) == set(begins)
    for name, begin in begins.items():
        holders = [page.relative_to(REPO_ROOT).as_posix() for page in _pages()
                   if begin in page.read_text(encoding="utf-8")]
        assert holders == [BLOCK_FILES[name]], (name, holders)


def test_check_names_the_file_and_block_that_differ_and_update_rewrites_every_page(tmp_path):
    import shutil

    import pytest

    from dmlbench.reporting.readme import BLOCK_FILES, update_readme

    for page in set(BLOCK_FILES.values()):
        (tmp_path / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO_ROOT / page, tmp_path / page)
    assert check_readme(root=tmp_path) is None
    bench = tmp_path / "docs" / "benchmarks.md"
    bench.write_text(bench.read_text().replace("| full step |", "| full step (edited) |"))
    readme = tmp_path / "README.md"
    readme.write_text(readme.read_text().replace("Study `default` on", "Study `edited` on"))
    assert check_readme(root=tmp_path) == ("README.md's block results differs from the results files: "
                                           "run 'dmlbench readme'")
    update_readme(root=tmp_path)
    assert check_readme(root=tmp_path) is None and "(edited)" not in bench.read_text()
    assert readme.read_text() == (REPO_ROOT / "README.md").read_text()
    bench.write_text(bench.read_text().replace("| full step |", "| full step (edited) |"))
    assert check_readme(root=tmp_path) == ("docs/benchmarks.md's block train-bench differs from the results "
                                           "files: run 'dmlbench readme'")
    (tmp_path / "docs" / "gpu-check.md").unlink()
    with pytest.raises(ValueError, match="docs/gpu-check.md is missing"):
        update_readme(root=tmp_path)
    assert "(edited)" in bench.read_text()  # nothing is written when a page is missing
    shutil.copy(REPO_ROOT / "docs" / "benchmarks.md", bench)
    assert check_readme(root=tmp_path) == "docs/gpu-check.md is missing: it holds the generated block gpu-check"


def test_no_function_of_the_readme_module_is_over_60_lines():
    import ast

    import dmlbench.reporting.readme as module

    tree = ast.parse(open(module.__file__, encoding="utf-8").read())
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long, long


def test_the_index_block_says_which_losses_index_well_from_the_summary_lines():
    from dmlbench.reporting.readme import render_index_block, render_index_study

    lines = ["**d** (4 runs; ...): brute force answers 10 queries per second on one thread.",
             "Under pq m=4, a + b loses least (0.1000 of its 0.9000) and c + d most (0.5000 of 0.8000).",
             "Across runs, the Recall@1 lost under pq m=8 follows the spectral decay (rho) most closely (Spearman +0.10).",
             "Across runs, the Recall@1 lost under pq m=4 follows the spectral decay (rho) most closely (Spearman +0.70)."]
    indexes = {"d": {"runs": 4, "lines": lines, "matched": [{"loss": "a", "miner": "b", "seeds": 2, "exact": 0.9}]}}
    block = render_index_block(None, indexes)
    assert "On d's runs, under pq m=4, a + b loses least (0.1000 of its 0.9000)" in block
    assert "(Spearman +0.70)" in block and "+0.10" not in block and "brute force answers 10" not in block
    study = render_index_study(indexes)
    assert "brute force answers 10 queries" in study and "| a | b | 2 | 0.9000 |" in study


def _cell(loss, miner, value, low, high, **extra):
    return {"loss": loss, "miner": miner, "map@r": value, "map@r_low": low, "map@r_high": high, "seeds": 4} | extra


def test_the_answer_names_the_leader_and_calls_overlapping_cells_tied():
    from dmlbench.reporting.readme import leader_and_ties, render_answer

    rows = [_cell("a", "x", 0.80, 0.78, 0.82), _cell("b", "y", 0.85, 0.84, 0.86), _cell("c", "z", 0.83, 0.80, 0.845),
            _cell("c", "w", 0.83, 0.80, 0.845, identical_to="c + z")]
    leader, tied = leader_and_ties(rows)
    assert leader["loss"] == "b" and [r["miner"] for r in tied] == ["z"]  # a's interval ends below b's; w merged
    summary = {"study": "s", "dataset": "d", "tables": {"d": rows, "e": [_cell("a", "x", 0.5, 0.1, 0.9),
                                                                         _cell("b", "y", 0.4, 0.2, 0.6)]}}
    tuned = {"tuning": {"datasets": {"d": {"rows": [
        {"loss": "b", "miner": "y", "seeds": 3, "tuned_map@r": 0.9, "tuned_map@r_low": 0.89, "tuned_map@r_high": 0.91},
        {"loss": "a", "miner": "x", "seeds": 3, "tuned_map@r": 0.8, "tuned_map@r_low": 0.7, "tuned_map@r_high": 0.88}]}}}}
    answer = render_answer(summary, tuned, "It rests on glyphs.")[0]
    assert "**b** loss with the **y** miner has the highest test MAP@R (0.850 [0.840, 0.860], 4 seeds per cell)" in answer
    assert "tied with 1 other cell whose 95% interval overlaps its own" in answer and "c + z" in answer
    assert "c + w" not in answer and "a + x" not in answer.split("studies/tuned.yaml")[0]
    assert "(0.900 [0.890, 0.910], 3 seeds per cell); no other cell's interval reaches it." in answer
    assert "e (4 seeds per cell) separates little: 1 of its 2 distinct cells are tied with its leader, a + x." in answer
    assert answer.endswith("It rests on glyphs.")
    assert render_answer({"study": "s", "dataset": "d", "tables": {"d": []}}) == []


def test_the_answer_says_what_the_findings_rest_on_from_the_study_file():
    from dmlbench.reporting.readme import study_basis

    basis = study_basis({"study": "default"})
    assert "grey han-typefaces images at 24 px," in basis and "fashion-mnist" not in basis  # the demo study's
    assert "a 3-layer CNN (16/32/64 channels, 64-d embedding) trained from scratch" in basis
    assert "(cub, cars196, sop, inshop) are supported" in basis and "not run here" in basis
    assert study_basis({"study": "no-such-study"}) is None


def test_the_readme_opens_its_results_with_the_answer():
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index(BEGIN):text.index(END)]
    assert block.split("\n")[2].startswith("**The answer.** ") and "It rests on " in block.split("\n")[2]
