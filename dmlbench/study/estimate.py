"""How long a study takes at a given training throughput, before running it.

A run's work is its training images (epochs x one pass over the train split, or x iters_per_epoch x
batch) and its evaluation images (the validation split after every epoch and before the first, the
test split and gallery once). The split sizes are the official ones (docs/protocol.md, Splits,
the validation split being 20% of the train classes, counted here as 20% of their images), so a
study can be estimated on a machine without the dataset. A dataset without published sizes (han-typefaces,
Fashion-MNIST's zero-shot split) is counted at the sizes a finished run of it recorded, in the results
folder or a shipped one (:func:`recorded_sizes`). Evaluation runs forward passes only,
counted as ``eval_speedup`` (3) times faster per image than a training step.

    dmlbench study studies/cub.yaml --estimate 1500     # images/s of the full step ('dmlbench bench train')
    dmlbench study studies/cub.yaml --estimate          # at the CUDA full step the GPU check measured
"""

from __future__ import annotations

import pandas as pd

from ..datasets.base import DatasetFacts
from ..datasets.benchmarks import VALIDATION_FRACTION

# name -> (train images, test images or queries, gallery images), as published: each dataset class's
# split_sizes (dmlbench/datasets/cub.py, ...), read live.
SPLIT_SIZES = DatasetFacts("split_sizes")
EVAL_SPEEDUP = 3.0


def measured_rate(results=None) -> tuple[float, str]:
    """The full step's images/s in results/bench/train-cuda.csv (ResNet-50, 224 px, batch 56x2: the
    benchmark studies' own settings), and where it comes from."""
    from ..errors import ConfigError
    from ..paths import REPO_ROOT

    path = (results or REPO_ROOT / "results") / "bench" / "train-cuda.csv"
    if not path.is_file():
        raise ConfigError(f"no CUDA throughput has been measured yet ({path} is absent): give --estimate "
                          f"IMAGES_PER_S (measure it with 'dmlbench bench train --device cuda'), or run the GPU "
                          f"check ('make gpu-check') on a GPU machine")
    table = pd.read_csv(path)
    full = table.loc[table["part"] == "full step"]
    if full.empty:
        raise ConfigError(f"{path} has no 'full step' row: rerun 'dmlbench bench train --device cuda'")
    row = full.iloc[0]
    return float(row["images_per_s"]), (f"the full step measured on CUDA, {path.name}: {row['model']}, "
                                        f"{row['image_size']} px, batch {row['batch']}")


def split_sizes(dataset: str) -> tuple[int, int, int, int] | None:
    """(train, validation, test, gallery) images of ``dataset``: published, else recorded by a run; None
    when neither is known."""
    if dataset in SPLIT_SIZES:
        train_all, test, gallery = SPLIT_SIZES[dataset]
        val = round(VALIDATION_FRACTION * train_all)
        return train_all - val, val, test, gallery
    return recorded_sizes(dataset)


def recorded_sizes(dataset: str) -> tuple[int, int, int, int] | None:
    """The split sizes the first finished run of ``dataset`` recorded (its metrics.json's "dataset"), in
    the results folder's runs/ or a reuse folder's (dmlbench.paths.reuse_folders); None without one."""
    from ..fileio import read_json
    from ..paths import reuse_folders, runs_dir

    for runs in [runs_dir(), *(folder / "runs" for folder in reuse_folders())]:
        for path in sorted(runs.glob(f"{dataset}__*/metrics.json")):
            try:
                facts = read_json(path)["dataset"]
                return (int(facts["num_train"]), int(facts["num_val"]), int(facts["num_test"]),
                        int(facts.get("num_gallery") or 0))
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return None


def run_work(config) -> tuple[int, int]:
    """(training images, evaluation images) of one run of ``config``."""
    train, val, test, gallery = split_sizes(config.dataset)
    per_epoch = config.iters_per_epoch * config.P * config.K if config.iters_per_epoch else train
    return config.epochs * per_epoch, (config.epochs + 1) * val + test + gallery


def estimate(study, images_per_s: float, *, eval_speedup: float = EVAL_SPEEDUP) -> pd.DataFrame:
    """One row per dataset of ``study`` with known split sizes (:func:`split_sizes`): runs, images, hours."""
    if not images_per_s > 0:
        raise ValueError(f"images_per_s must be a positive number, got {images_per_s!r}")
    rows: dict[str, dict] = {}
    known = {dataset: split_sizes(dataset) is not None for dataset in {cell.config.dataset for cell in study.cells}}
    for cell in study.cells:
        if not known[cell.config.dataset]:
            continue
        train, evaluation = run_work(cell.config)
        row = rows.setdefault(cell.config.dataset, {"dataset": cell.config.dataset, "runs": 0, "train_images": 0,
                                                    "eval_images": 0})
        row["runs"] += 1
        row["train_images"] += train
        row["eval_images"] += evaluation
    table = pd.DataFrame(list(rows.values()), columns=["dataset", "runs", "train_images", "eval_images"])
    seconds = table["train_images"] / images_per_s + table["eval_images"] / (eval_speedup * images_per_s)
    table["hours"] = seconds / 3600
    table["hours_per_run"] = table["hours"] / table["runs"].clip(lower=1)
    return table
