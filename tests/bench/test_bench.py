"""The benchmark scripts run end to end (their timings are read in results/bench/, not asserted)."""

import math

import numpy as np

import pytest

from dmlbench.bench import losses as bench_losses
from dmlbench.losses import LOSSES


def test_loss_benchmark_covers_every_loss_and_runs():
    assert {case.loss for case in bench_losses.CASES} == set(LOSSES.names())
    table = bench_losses.run(batches=(32,), dims=(16,), repeats=3)
    assert list(table["case"]) == [case.label for case in bench_losses.CASES]
    assert (table["dmlbench_ms"] > 0).all()
    for case, ratio in zip(bench_losses.CASES, table["pml/dmlbench"]):
        assert math.isnan(ratio) == (case.pml is None), case.label


def test_benchmark_cli_saves_its_table(isolated):
    from dmlbench.cli import main

    assert main(["bench", "losses", "--batches", "32", "--dims", "16", "--repeats", "3"]) == 0
    text = (isolated / "results" / "bench" / "losses-cpu.txt").read_text()
    assert "medians of interleaved repetitions" in text and "lifted structure" in text
    assert (isolated / "results" / "bench" / "losses-cpu.csv").is_file()


def test_miner_benchmark_covers_every_miner_and_runs():
    from dmlbench.bench import miners as bench_miners
    from dmlbench.miners import MINERS

    assert {case.miner for case in bench_miners.CASES} == set(MINERS.names())
    table = bench_miners.run(batches=(32,), dims=(16,), repeats=3)
    assert list(table["case"]) == [case.label for case in bench_miners.CASES]
    assert (table["dmlbench_ms"] > 0).all()
    for case, ratio in zip(bench_miners.CASES, table["pml/dmlbench"]):
        assert math.isnan(ratio) == (case.pml is None), case.label


def test_eval_benchmark_runs_both_evaluators_and_they_agree(isolated):
    from dmlbench.cli import main

    assert main(["bench", "eval", "--size", "1500x32x40", "--size", "800x16x200"]) == 0
    import pandas as pd

    table = pd.read_csv(isolated / "results" / "bench" / "eval-cpu.csv")
    assert list(table["evaluator"]) == ["dmlbench", "pytorch-metric-learning"] * 2
    assert (table["total_s"] > 0).all() and (table["peak_rss_gb"] > 0).all()
    assert (table["max_metric_diff"] <= 1e-6).all()
    assert "AccuracyCalculator" in (isolated / "results" / "bench" / "eval-cpu.txt").read_text()


def test_eval_benchmark_rejects_a_bad_size(capsys):
    import pytest

    from dmlbench.bench.eval import main

    with pytest.raises(SystemExit):
        main(["--size", "huge"])
    assert "use one of ['cub', 'sop'] or NxDIMxCLASSES" in capsys.readouterr().err


def test_train_benchmark_measures_data_model_and_full_step(isolated):
    import pandas as pd

    from dmlbench.cli import main

    assert main(["bench", "train", "--model", "resnet18", "--image-size", "32", "--batch", "4x2", "--images", "120",
                 "--classes", "12", "--steps", "3", "--warmup", "1", "--device", "cpu", "--workers", "1"]) == 0
    table = pd.read_csv(isolated / "results" / "bench" / "train-cpu.csv")
    assert list(table["part"]) == ["data pipeline alone", "model step alone", "full step"]
    assert (table["images_per_s"] > 0).all() and table["of_model_step"].iloc[1] == 1.0
    text = (isolated / "results" / "bench" / "train-cpu.txt").read_text()
    assert "resnet18, 32 px crops, batch 4x2 = 8" in text and "loader workers 1" in text


def test_synthetic_cache_has_cub_like_images(tmp_path):
    from dmlbench.bench.train import synthetic_cache

    cache = synthetic_cache(tmp_path / "cache", images=10, classes=3, shorter_side=40)
    shapes = {tuple(cache[i].shape) for i in range(10)}
    assert shapes == {(3, 40, 53), (3, 53, 40)} and list(cache.labels[:4]) == [0, 1, 2, 0]


def test_train_benchmark_rejects_a_bad_batch(capsys):
    import pytest

    from dmlbench.bench.train import main

    with pytest.raises(SystemExit):
        main(["--batch", "56by2"])
    assert "use PxK, e.g. 56x2" in capsys.readouterr().err


def test_eval_sizes_take_a_hard_suffix():
    from dmlbench.bench.eval import DEFAULT_SIZES, SIZES, parse_size

    assert parse_size("cub-hard") == ("cub-hard", (*SIZES["cub"], True))
    assert parse_size("2000x64x50-hard") == ("2000x64x50-hard", (2000, 64, 50, True))
    assert parse_size("2000x64x50") == ("2000x64x50", (2000, 64, 50, False))
    assert {"cub-hard", "sop-hard"} <= set(DEFAULT_SIZES)


@pytest.mark.parametrize("n,dim,classes", [(2000, 64, 50), (3000, 32, 500)])
def test_hard_embeddings_land_in_the_recall_band_and_both_evaluators_agree(n, dim, classes):
    """Class-overlapping embeddings, as hard as real test sets: Recall@1 about 0.7, the same
    metrics from us and from pytorch-metric-learning (NMI to the bit, as its k-means is faiss's)."""
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

    from dmlbench.bench.eval import synthetic
    from dmlbench.evaluation.metrics import evaluate

    x, labels, _ = synthetic(n, dim, classes, hard=True)
    ours = evaluate(x, labels)
    assert 0.6 <= ours["recall@1"] <= 0.8
    calculator = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r", "NMI", "AMI"),
                                    k="max_bin_count")
    theirs = calculator.get_accuracy(x, labels, x, labels, ref_includes_query=True)
    assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"], abs=1e-6)
    assert ours["r_precision"] == pytest.approx(theirs["r_precision"], abs=1e-6)
    assert ours["map@r"] == pytest.approx(theirs["mean_average_precision_at_r"], abs=1e-6)
    assert ours["nmi"] == pytest.approx(theirs["NMI"], abs=1e-12)
    assert ours["ami"] == pytest.approx(theirs["AMI"], abs=1e-12)


def test_hard_embeddings_are_ranked_as_brute_force_ranks_them():
    from dmlbench.bench.eval import synthetic
    from dmlbench.evaluation.metrics import evaluate
    from tests.evaluation.test_metrics import brute_force

    x, labels, _ = synthetic(600, 32, 30, hard=True)
    ours = evaluate(x, labels, nmi=False)
    for key, value in brute_force(x, labels, (1, 2, 4, 8)).items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


def test_cache_benchmark_decodes_on_one_and_every_core_into_the_same_bytes(isolated):
    import os

    from dmlbench.cli import main

    assert main(["bench", "cache", "--images", "60", "--size", "120"]) == 0
    text = (isolated / "results" / "bench" / "cache-cpu.txt").read_text()
    rows = (isolated / "results" / "bench" / "cache-cpu.csv").read_text().splitlines()
    assert "generated JPEGs of 120 px" in text and len(rows) == 1 + len({1, os.cpu_count()})
    assert all(row.endswith(("True," + row.split(",")[-1])) for row in rows[1:])  # same_bytes_as_1_worker
