"""patience / min_delta: training stops when validation no longer improves, also across a resume."""

import pytest
import torch

from dmlbench.config import RunConfig
from dmlbench.datasets import load_dataset
from dmlbench.training import resume
from dmlbench.training.loop import train

from ..support import tiny_settings
from .test_resume import Interrupted, stop_during, strip

CELL = dict(loss="contrastive", miner="random")


@pytest.fixture
def splits(isolated):
    return load_dataset("fashion-mnist")


def config(**changes):
    return RunConfig(**tiny_settings(epochs=5, device="cpu", lr=3e-3) | CELL | changes)


def expected_epochs_run(scores: dict[int, float], patience: int, min_delta: float, epochs: int) -> int:
    """The rule, written out: stop after epoch e when the last gain of more than min_delta over the last
    such gain came ``patience`` or more epochs before e."""
    reference, last = -float("inf"), 0
    for epoch in range(1, epochs + 1):
        if scores[epoch] > reference + min_delta:
            reference, last = scores[epoch], epoch
        if epoch - last >= patience and epoch < epochs:
            return epoch
    return epochs


def test_a_huge_min_delta_stops_after_patience_epochs_and_tests_the_best(splits):
    result = train(config(patience=1, min_delta=0.9), splits, progress=False)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    scores = {h["epoch"]: h["val_map@r"] for h in result.history if h["epoch"] >= 1}
    assert result.best_epoch == max(scores, key=scores.get)
    assert all(h["val_time_s"] >= 0 for h in result.history[1:])
    longer = train(config(patience=2, min_delta=0.9), splits, progress=False)
    assert [h["epoch"] for h in longer.history] == [0, 1, 2, 3]
    assert strip(longer.history[:3]) == strip(result.history)  # the same epochs up to the stop


def test_without_patience_every_epoch_runs_and_patience_follows_the_rule(splits):
    whole = train(config(), splits, progress=False)
    assert [h["epoch"] for h in whole.history] == [0, 1, 2, 3, 4, 5]
    scores = {h["epoch"]: h["val_map@r"] for h in whole.history if h["epoch"] >= 1}
    for patience, min_delta in ((1, None), (2, None), (1, 0.01), (1, 0.05)):
        stopped = train(config(patience=patience, min_delta=min_delta), splits, progress=False)
        run = expected_epochs_run(scores, patience, min_delta or 0.0, 5)
        assert [h["epoch"] for h in stopped.history] == list(range(run + 1)), (patience, min_delta, scores)
        assert strip(stopped.history) == strip(whole.history[:run + 1])
        assert stopped.best_epoch == max((e for e in scores if e <= run), key=scores.get)


@pytest.mark.parametrize("patience,interrupt_in,stop_after", [(1, 2, 2), (2, 3, 3)])
def test_a_resumed_run_stops_at_the_same_epoch_with_the_same_numbers(splits, tmp_path, patience, interrupt_in,
                                                                   stop_after):
    settings = config(patience=patience, min_delta=0.9)
    whole = train(settings, splits, progress=False)
    assert whole.history[-1]["epoch"] == stop_after
    path = tmp_path / resume.RESUME_FILE
    with pytest.raises(Interrupted):
        train(settings, splits, progress=False, checkpoint=path, on_epoch_end=stop_during(interrupt_in))
    assert torch.load(path, weights_only=True)["epoch"] == interrupt_in - 1
    again = train(settings, splits, progress=False, checkpoint=path)
    assert again.extra["resumed_after_epochs"] == [interrupt_in - 1]
    assert strip(again.history) == strip(whole.history) and again.best_epoch == whole.best_epoch
    assert again.test_metrics == whole.test_metrics
    assert torch.equal(again.test_embeddings, whole.test_embeddings)


def test_plateau_schedule_drops_the_lr_at_the_first_plateau_and_stops_at_the_second(splits):
    result = train(config(lr_schedule="plateau", patience=1, min_delta=0.9), splits, progress=False)
    # epoch 1 sets the reference, epoch 2 no gain: lr / 10 for epoch 3; epoch 3 no gain: stop
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    assert [h["lr"] for h in result.history[1:]] == pytest.approx([3e-3, 3e-3, 3e-4], rel=1e-12)
    plain = train(config(patience=1, min_delta=0.9), splits, progress=False)
    assert strip(plain.history) == strip(result.history[:3])  # the same epochs before the drop
    scores = {h["epoch"]: h["val_map@r"] for h in result.history if h["epoch"] >= 1}
    assert result.best_epoch == max(scores, key=scores.get)


@pytest.mark.parametrize("interrupt_in", [2, 3])
def test_a_resumed_plateau_run_drops_and_stops_as_an_uninterrupted_one(splits, tmp_path, interrupt_in):
    settings = config(lr_schedule="plateau", patience=1, min_delta=0.9)
    whole = train(settings, splits, progress=False)
    path = tmp_path / resume.RESUME_FILE
    with pytest.raises(Interrupted):  # 3: saved after epoch 2, before the drop that starts epoch 3
        train(settings, splits, progress=False, checkpoint=path, on_epoch_end=stop_during(interrupt_in))
    again = train(settings, splits, progress=False, checkpoint=path)
    assert again.extra["resumed_after_epochs"] == [interrupt_in - 1]
    assert strip(again.history) == strip(whole.history) and again.best_epoch == whole.best_epoch
    assert again.test_metrics == whole.test_metrics
