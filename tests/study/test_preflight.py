"""Settings that only the data or the machine can refute (dmlbench.study.preflight) stop before anything
runs: before the first notebook of a study, before a single run's folder exists. Each with one line
naming the setting, its value, why and the valid range. The tiny Fashion-MNIST (conftest) has 5
training classes of 40 images each."""

import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from dmlbench.study import preflight
from dmlbench.cli import main
from dmlbench.config import RunConfig
from dmlbench.errors import ConfigError
from dmlbench.losses import ContrastiveLoss, MultiSimilarityLoss, TripletMarginLoss
from dmlbench.miners import MarginTripletMiner, MultiSimilarityMiner, RhoDistanceMiner, SemiHardMiner
from dmlbench.paths import REPO_ROOT
from dmlbench.study.cells import load_study

from ..support import TRAIN_PER_CLASS, tiny_settings
from ..support import write_sop


def set_options(settings: dict) -> list[str]:
    """``--set key=value`` options for ``dmlbench run`` (JSON is YAML), on Fashion-MNIST unless told: an
    ad-hoc run otherwise takes the default study's first dataset."""
    settings = {"dataset": "fashion-mnist", **settings}
    return [option for key, value in settings.items() for option in ("--set", f"{key}={json.dumps(value)}")]


def run_line(capsys, settings: dict, loss: str = "triplet", miner: str = "semi-hard") -> tuple[int, str]:
    """``dmlbench run --loss ... --set ...`` in this process: (exit code, first line of stderr)."""
    code = main(["run", "--study", str(REPO_ROOT / "studies" / "demo.yaml"), "--loss", loss, "--miner", miner,
                 *set_options(settings)])  # the demo study's Fashion-MNIST protocol
    err = capsys.readouterr().err.strip()
    return code, err.splitlines()[0] if err else ""


def write_study(path, settings: dict, losses=None, miners=None) -> str:
    path.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "losses": losses or ["triplet"],
                                    "miners": miners or ["semi-hard"], "settings": settings}))
    return str(path)


def study_line(capsys, argv: list[str]) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err.splitlines()[0] if err else ""


# (settings beyond tiny_settings, what the one error line must hold)
DATA_REFUTED = [
    ({"P": 6}, ["P=6", "draws P distinct classes", "has 5 classes", "valid range: 1 <= P <= 5"]),
    ({"K": TRAIN_PER_CLASS + 1}, [f"K={TRAIN_PER_CLASS + 1}", f"more than {TRAIN_PER_CLASS} images",
                                  f"valid range: 1 <= K <= {TRAIN_PER_CLASS}"]),
    ({"K": 100000}, ["K=100000", f"valid range: 1 <= K <= {TRAIN_PER_CLASS}"]),
    ({"sampler": "random", "P": 5, "K": 41}, ["P x K = 205", "has 200 images", "valid range: P x K <= 200"]),
    ({"sampler": "hierarchical"}, ["sampler='hierarchical'", "no super-class labels", "valid samplers for "
                                   "fashion-mnist: pk, random"]),
]


@pytest.mark.parametrize("changes,parts", DATA_REFUTED, ids=[json.dumps(c) for c, _ in DATA_REFUTED])
def test_settings_the_training_split_refutes_stop_a_single_run_before_its_folder_exists(isolated, capsys, changes,
                                                                                         parts):
    code, line = run_line(capsys, tiny_settings(**changes))
    assert code == 2 and all(part in line for part in parts), line
    assert not (isolated / "results").exists()


@pytest.mark.parametrize("changes,parts", DATA_REFUTED[:2], ids=["P", "K"])
def test_settings_the_training_split_refutes_stop_a_study_when_it_is_loaded(isolated, tmp_path, capsys, changes,
                                                                            parts):
    study = write_study(tmp_path / "bad.yaml", tiny_settings(**changes))
    make = ["study", study, "--emit-make", str(tmp_path / "cells.mk")]  # what make all runs first
    for argv in (["study", study], make):
        code, line = study_line(capsys, argv)
        assert code == 2, line
        assert line.startswith(f"dmlbench: error: {study}: cell fashion-mnist x triplet x semi-hard"), line
        assert all(part in line for part in parts), line
    assert not (isolated / "results").exists() and not (tmp_path / "cells.mk").exists()
    load_study(study, check_networks=False)  # listed, its data prepared, reported on: nothing to train


def test_the_sampler_is_checked_against_a_benchmarks_label_lists_or_its_published_split(tmp_path):
    def refusal(settings, split):
        with pytest.raises(ConfigError) as error:
            preflight.check_sampler(RunConfig(**settings), split)
        return str(error.value)

    write_sop(tmp_path / "sop")  # label lists only, no image: 10 train classes of 3 images, 2 of them validation
    sop = preflight.training_split("sop", str(tmp_path / "sop"))
    assert (sop.classes, sop.largest_class, sop.super_labels) == (8, 3, True)
    preflight.check_sampler(RunConfig(dataset="sop", sampler="hierarchical", P=8, K=3), sop)
    assert "valid range: 1 <= P <= 8" in refusal({"dataset": "sop", "P": 9, "K": 2}, sop)
    assert "valid range: 1 <= K <= 3" in refusal({"dataset": "sop", "P": 2, "K": 4}, sop)
    cub = preflight.training_split("cub", str(tmp_path / "nothing here"))  # absent: 100 train classes, 20 validation
    assert (cub.classes, cub.largest_class, cub.source) == (80, None, "published split")
    assert "80 classes (published split); valid range: 1 <= P <= 80" in refusal({"dataset": "cub", "P": 81}, cub)
    preflight.check_sampler(RunConfig(dataset="cub", P=80, K=10**6), cub)  # K needs the label lists: not refused
    assert "super_per_batch=0" in refusal({"dataset": "sop", "sampler": "hierarchical",
                                           "sampler_kwargs": {"super_per_batch": 0}}, None)


def test_absent_data_leaves_the_data_checks_to_the_run_but_not_the_others(isolated, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert preflight.training_split("fashion-mnist", str(empty)) is None
    preflight.check_sampler(RunConfig(**tiny_settings(P=6, data_root=str(empty))), None)  # nothing to check P against
    # a data_root given without the data is refused before the run's folder or kernel (dmlbench.study.preflight)
    code, line = run_line(capsys, tiny_settings(data_root=str(empty)))
    assert code == 2 and f"data_root '{empty}': no Fashion-MNIST files in {empty}" in line, line
    # a benchmark found nowhere (no data_root given): its published classes, and the memory, which needs no data
    cub = str(REPO_ROOT / "studies" / "cub.yaml")
    code = main(["run", "--study", cub, "--loss", "triplet", "--miner", "semi-hard",
                 *set_options(tiny_settings(dataset="cub", model="convnet", K=100000))])
    line = capsys.readouterr().err.strip()
    assert code == 2 and line.startswith("dmlbench: error: P x K = 500000"), line


def test_a_batch_too_big_for_memory_is_refused_before_anything_is_allocated(isolated, tmp_path):
    """K = 100000 (half a million images per batch): refused with the estimate and the limit by a
    process that never grew beyond the size of an imported torch."""
    wrapper = ("import json, resource, subprocess, sys; "
               "run = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
               "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss; "
               "print(json.dumps([run.returncode, run.stderr, peak]))")
    command = [sys.executable, "-m", "dmlbench", "run", "--study", str(REPO_ROOT / "studies" / "cub.yaml"),
               "--loss", "triplet", "--miner", "semi-hard",  # CUB found nowhere: the memory check speaks
               *set_options(tiny_settings(dataset="cub", model="convnet", K=100000))]
    done = subprocess.run([sys.executable, "-c", wrapper, *command], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=300)
    code, err, peak_kb = json.loads(done.stdout)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    for part in ("P x K = 500000 (P=5, K=100000)", "one training step needs at least", "500000 x 500000 distances",
                 "more than this machine's", "valid range here: P x K <= "):
        assert part in err, err
    assert peak_kb < 2_000_000, f"the refusing process peaked at {peak_kb / 1e6:.1f} GB"
    assert not (isolated / "results").exists()


def test_the_memory_estimate_and_the_largest_batch_that_fits(isolated, monkeypatch, capsys):
    config = RunConfig(**tiny_settings())
    parts = preflight.step_memory(config, "cpu")
    assert parts["input images"] == 20 * 28 * 28 * 4 and parts["20 x 20 distances and masks"] == 6 * 20 * 20
    assert parts["network activations"] > 20 * 4 * 28 * 28 * 4  # at least the first convolution's output
    proxy = preflight.step_memory(RunConfig(**tiny_settings(), loss="proxy-anchor", miner="none"), "cpu")
    assert not any("distances" in name for name in proxy)  # a proxy loss has no (B, B) structure
    every = preflight.step_memory(RunConfig(**tiny_settings(), loss="triplet", miner="none"), "cpu")
    assert every["all triplets"] == 24 * 20 * 3 * 16  # each anchor: K - 1 positives x (B - K) negatives
    need = sum(parts.values())
    monkeypatch.setattr(preflight, "device_memory", lambda device, processes=None: (need - 1, "a tiny memory"))
    assert preflight.largest_batch(config, "cpu", need - 1) == 19
    code, line = run_line(capsys, tiny_settings())
    assert code == 2 and "more than this machine's a tiny memory; valid range here: P x K <= 19" in line, line
    assert not (isolated / "results").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_device_cuda_without_a_gpu_stops_a_run_and_a_study_before_any_notebook(isolated, tmp_path, capsys):
    code, line = run_line(capsys, tiny_settings(device="cuda"))
    assert code == 2 and "device='cuda'" in line and "valid choices here: auto (the CPU here), cpu" in line, line
    study = write_study(tmp_path / "gpu.yaml", tiny_settings(device="cuda"))
    code, line = study_line(capsys, ["study", study])
    assert code == 2 and f"{study}: cell fashion-mnist x triplet x semi-hard x seed 0: device='cuda'" in line, line
    # A study can still be listed, and its makefile written, on a machine without a GPU (a Slurm login
    # node); the cell itself stops at once where it would run.
    assert study_line(capsys, ["study", study, "--emit-make", str(tmp_path / "cells.mk")])[0] == 0
    run_id = load_study(study).cells[0].run_id
    code, line = study_line(capsys, ["run", "--study", study, "--cell", run_id])
    assert code == 2 and "device='cuda'" in line, line
    assert not (isolated / "results").exists()


def test_finished_cells_are_not_held_against_the_machine(isolated, tmp_path, monkeypatch):
    study = load_study(write_study(tmp_path / "study.yaml", tiny_settings()))
    monkeypatch.setattr(preflight, "device_memory", lambda device, processes=None: (1, "1 byte"))
    with pytest.raises(ConfigError, match="more than this machine's 1 byte"):
        preflight.check_study_machine(study)
    monkeypatch.setattr(type(study.cells[0]), "is_done", lambda cell: True)
    preflight.check_study_machine(study)  # a report can be rebuilt where the cells could not run


@pytest.mark.parametrize("loss,miner,changes,parts", [
    ("contrastive", "none", {"loss_kwargs": {"neg_margin": -1}},
     ["loss_kwargs: contrastive neg_margin", "got -1", "valid range: neg_margin > pos_margin >= 0"]),
    ("contrastive", "none", {"loss_kwargs": {"pos_margin": 0.5, "neg_margin": 0.4}}, ["got 0.4", "pos_margin=0.5"]),
    ("contrastive", "none", {"loss_kwargs": {"pos_margin": -0.1}}, ["pos_margin", "got -0.1", "0 <= pos_margin"]),
    ("triplet", "semi-hard", {"loss_kwargs": {"margin": -0.2}}, ["triplet margin", "got -0.2", "margin >= 0"]),
    ("multi-similarity", "multi-similarity", {"loss_kwargs": {"base": 1.5}}, ["base", "got 1.5", "-1 <= base <= 1"]),
    ("multi-similarity", "multi-similarity", {"miner_kwargs": {"epsilon": -0.1}},
     ["miner_kwargs: multi-similarity epsilon", "got -0.1", "0 <= epsilon <= 2"]),
    ("triplet", "semi-hard", {"miner_kwargs": {"margin": float("nan")}}, ["semi-hard margin", "got nan"]),
])
def test_margins_out_of_their_papers_range_are_refused(isolated, tmp_path, capsys, loss, miner, changes, parts):
    with pytest.raises(ConfigError) as error:
        RunConfig(**tiny_settings(), loss=loss, miner=miner, **changes).validate()
    assert all(part in str(error.value) for part in parts), str(error.value)
    study = tmp_path / "bad.yaml"
    study.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "losses": {loss: changes.get("loss_kwargs", {})},
                                     "miners": {miner: changes.get("miner_kwargs", {})}, "settings": tiny_settings()}))
    code, line = study_line(capsys, ["study", str(study)])
    assert code == 2 and all(part in line for part in parts), line


def test_margin_checks_of_the_components_themselves():
    for build in (lambda: ContrastiveLoss(neg_margin=0.0), lambda: ContrastiveLoss(neg_margin=math.inf),
                  lambda: TripletMarginLoss(margin=math.nan), lambda: MultiSimilarityLoss(base=-1.01),
                  lambda: MultiSimilarityMiner(epsilon=2.5), lambda: SemiHardMiner(margin=math.inf),
                  lambda: MarginTripletMiner(margin=math.nan), lambda: RhoDistanceMiner(rho=1.5)):
        with pytest.raises(ConfigError, match="got"):
            build()
    ContrastiveLoss(pos_margin=0.0, neg_margin=1.0), TripletMarginLoss(margin=0.0, variant="softplus")
    MultiSimilarityLoss(base=1.0), MultiSimilarityMiner(epsilon=0.0)


@pytest.mark.parametrize("value", ["0", "fast"])
def test_lr_is_refused_in_the_same_words_whatever_is_wrong_with_it(isolated, capsys, value):
    code, line = run_line(capsys, tiny_settings() | {"lr": yaml.safe_load(value)})
    assert code == 2 and line == f"dmlbench: error: lr must be a positive number, got {yaml.safe_load(value)!r}", line
