"""Per-epoch training state: a run interrupted after an epoch continues to the same numbers."""

import pytest
import torch

from dmlbench.training import resume
from dmlbench.config import RunConfig
from dmlbench.datasets import load_dataset
from dmlbench.errors import ConfigError
from dmlbench.training.loop import train

from ..support import tiny_settings


class Interrupted(Exception):
    pass


def strip(history):
    """The history without its timings (training and validation seconds), which no two runs share."""
    return [{k: v for k, v in r.items() if k not in ("time_s", "val_time_s")} for r in history]


@pytest.fixture
def splits(isolated):
    return load_dataset("fashion-mnist")


def stop_during(epoch):
    """A callback that stops training during ``epoch``'s end: that epoch's state is never saved."""
    def callback(record, history):
        if record["epoch"] == epoch:
            raise Interrupted
    return callback


# A random miner (its generator), a loss with parameters (proxies: optimiser state), a sampler whose
# stream runs across epochs (iters_per_epoch < one pass) and one whose epoch is a whole pass.
CASES = [
    dict(loss="contrastive", miner="random"),
    dict(loss="margin", miner="distance-weighted"),
    dict(loss="proxy-anchor", miner="none"),
    dict(loss="triplet", miner="semi-hard", sampler="random", iters_per_epoch=0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['loss']}-{c['miner']}")
def test_interrupted_run_resumes_to_identical_numbers(splits, tmp_path, case):
    config = RunConfig(**tiny_settings(epochs=4, device="cpu") | case)
    whole = train(config, splits, progress=False)
    path = tmp_path / resume.RESUME_FILE
    with pytest.raises(Interrupted):
        train(config, splits, progress=False, checkpoint=path, on_epoch_end=stop_during(3))
    assert torch.load(path, weights_only=True)["epoch"] == 2
    again = train(config, splits, progress=False, checkpoint=path)
    assert again.extra["resumed_after_epochs"] == [2]
    assert again.test_metrics == whole.test_metrics
    assert strip(again.history) == strip(whole.history)
    assert again.best_epoch == whole.best_epoch
    assert torch.equal(again.test_embeddings, whole.test_embeddings)
    for name, value in whole.criterion.state_dict().items():
        assert torch.equal(again.criterion.state_dict()[name], value)


def test_resuming_twice_keeps_every_resume_point(splits, tmp_path):
    config = RunConfig(**tiny_settings(epochs=4, device="cpu"), loss="contrastive", miner="random")
    path = tmp_path / resume.RESUME_FILE
    with pytest.raises(Interrupted):
        train(config, splits, progress=False, checkpoint=path, on_epoch_end=stop_during(2))
    with pytest.raises(Interrupted):
        train(config, splits, progress=False, checkpoint=path, on_epoch_end=stop_during(4))
    result = train(config, splits, progress=False, checkpoint=path)
    assert result.extra["resumed_after_epochs"] == [1, 3]
    assert result.test_metrics == train(config, splits, progress=False).test_metrics


def test_a_state_from_another_configuration_is_refused(splits, tmp_path):
    path = tmp_path / resume.RESUME_FILE
    config = RunConfig(**tiny_settings(epochs=2, device="cpu"))
    with pytest.raises(Interrupted):
        train(config, splits, progress=False, checkpoint=path, on_epoch_end=stop_during(2))
    other = RunConfig(**tiny_settings(epochs=2, device="cpu", lr=2e-3))
    with pytest.raises(ConfigError, match="saved by another configuration.*delete it"):
        train(other, splits, progress=False, checkpoint=path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read the saved training state"):
        train(config, splits, progress=False, checkpoint=path)


KILLING_LOSS = '''
import os
import signal
import time
from pathlib import Path

from dmlbench.losses import TripletMarginLoss

CALLS = []


class KilledOnce(TripletMarginLoss):
    """A triplet loss whose kernel process is killed (SIGKILL) at batch KILL_AT_BATCH, once."""

    def terms(self, embeddings, labels, tuples):
        CALLS.append(1)
        marker = Path(os.environ["KILL_MARKER"])
        if len(CALLS) == int(os.environ["KILL_AT_BATCH"]) and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().terms(embeddings, labels, tuples)


class PausedOnce(TripletMarginLoss):
    """A triplet loss that stops at batch KILL_AT_BATCH, once, after leaving KILL_MARKER: there the test
    kills the whole run from outside."""

    def terms(self, embeddings, labels, tuples):
        CALLS.append(1)
        marker = Path(os.environ["KILL_MARKER"])
        if len(CALLS) == int(os.environ["KILL_AT_BATCH"]) and not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(600)
        return super().terms(embeddings, labels, tuples)
'''


def test_a_run_killed_in_epoch_two_resumes_to_the_uninterrupted_metrics(isolated, tmp_path, monkeypatch):
    """The notebook kernel training a cell is SIGKILLed in the middle of epoch 2; the study records the
    cell as failed and finishes the other one; run again, the cell continues from the state saved after
    epoch 1 and ends with exactly the metrics of a run that was never killed."""
    import json
    import subprocess
    import sys

    import yaml

    from dmlbench.study.cells import load_study

    from ..support import user_module

    user_module(tmp_path, monkeypatch, "killing_loss.py", KILLING_LOSS)
    iters = 4
    monkeypatch.setenv("KILL_AT_BATCH", str(iters + 2))  # epoch 2, its second batch
    monkeypatch.setenv("KILL_MARKER", str(tmp_path / "killed"))
    study_path = tmp_path / "crash.yaml"
    study_path.write_text(yaml.safe_dump({
        "name": "crash", "datasets": ["fashion-mnist"], "losses": ["killing_loss:KilledOnce"],
        "miners": ["semi-hard"], "cells": [{"loss": "contrastive", "miner": "none"}], "seeds": [0],
        "settings": tiny_settings(epochs=3, iters_per_epoch=iters)}))
    command = [sys.executable, "-m", "dmlbench", "study", str(study_path), "--no-report"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 1 and "DeadKernelError" in first.stderr, first.stderr[-2000:]
    assert (tmp_path / "killed").is_file()
    killed, other = load_study(study_path).cells
    assert other.is_done() and not killed.is_done()
    failure = json.loads((killed.run_dir / "failure.json").read_text())
    assert "DeadKernelError" in failure["error"] and failure["resumable_after_epoch"] == 1
    other_record = other.metrics_path.read_bytes()

    second = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    resumed = json.loads(killed.metrics_path.read_text())
    assert resumed["resumed_after_epochs"] == [1]
    assert not (killed.run_dir / "failure.json").exists() and not (killed.run_dir / "resume.pt").exists()
    assert other.metrics_path.read_bytes() == other_record  # the finished cell untouched

    # the same cell never interrupted, in another results folder (the marker now stops the kill)
    monkeypatch.setenv("DMLBENCH_RESULTS", str(tmp_path / "uninterrupted"))
    run = subprocess.run([sys.executable, "-m", "dmlbench", "run", "--study", str(study_path), "--cell",
                          killed.run_id], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    whole = json.loads((tmp_path / "uninterrupted" / "runs" / killed.run_id / "metrics.json").read_text())
    assert whole["resumed_after_epochs"] == []
    assert resumed["test"] == whole["test"] and resumed["diagnostics"] == whole["diagnostics"]
    assert resumed["best_epoch"] == whole["best_epoch"]
    assert strip(resumed["history"]) == strip(whole["history"])


def test_a_run_killed_from_outside_resumes_to_the_uninterrupted_metrics(isolated, tmp_path, monkeypatch):
    """'dmlbench run' and its notebook kernel, SIGKILLed together (as a pre-emption would) in the middle
    of epoch 2, then started again: the run continues after epoch 1 and ends as if never stopped."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    from dmlbench.study.cells import load_study

    from ..support import user_module

    user_module(tmp_path, monkeypatch, "killing_loss.py", KILLING_LOSS)
    iters = 4
    monkeypatch.setenv("KILL_AT_BATCH", str(iters + 2))
    monkeypatch.setenv("KILL_MARKER", str(tmp_path / "paused"))
    study_path = tmp_path / "preempted.yaml"
    study_path.write_text(yaml.safe_dump({
        "name": "preempted", "datasets": ["fashion-mnist"], "losses": ["killing_loss:PausedOnce"],
        "miners": ["batch-hard"], "seeds": [1], "settings": tiny_settings(epochs=3, iters_per_epoch=iters)}))
    (cell,) = load_study(study_path).cells
    command = [sys.executable, "-m", "dmlbench", "run", "--study", str(study_path), "--cell", cell.run_id]
    runner = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "paused").exists() and runner.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert (tmp_path / "paused").exists(), "the run never reached epoch 2"
    assert torch.load(cell.run_dir / "resume.pt", weights_only=True)["epoch"] == 1
    os.killpg(runner.pid, signal.SIGKILL)  # the runner, papermill and the kernel at once
    runner.wait(timeout=60)
    assert not cell.is_done()

    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed = json.loads(cell.metrics_path.read_text())
    assert resumed["resumed_after_epochs"] == [1] and not (cell.run_dir / "resume.pt").exists()

    monkeypatch.setenv("DMLBENCH_RESULTS", str(tmp_path / "uninterrupted"))
    whole_run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert whole_run.returncode == 0, whole_run.stderr[-2000:]
    whole = json.loads((tmp_path / "uninterrupted" / "runs" / cell.run_id / "metrics.json").read_text())
    assert whole["resumed_after_epochs"] == []
    assert resumed["test"] == whole["test"] and resumed["diagnostics"] == whole["diagnostics"]
    assert strip(resumed["history"]) == strip(whole["history"])
