"""lr_schedule: the cosine learning rate computed from the step alone, in training and after a resume."""

import math

import pytest
import torch

from dmlbench.config import RunConfig
from dmlbench.datasets import load_dataset
from dmlbench.training import resume
from dmlbench.training.loop import set_learning_rates, train

from ..support import tiny_settings
from .test_resume import Interrupted, stop_during, strip


def two_groups(lrs=(0.1, 0.004)):
    weights = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))]
    return torch.optim.SGD([{"params": [w], "lr": lr} for w, lr in zip(weights, lrs)], lr=1.0)


@pytest.mark.parametrize("step", [0, 1, 5, 10, 17, 19, 20])
def test_cosine_lr_of_every_group_at_a_step(step):
    optimizer, total = two_groups(), 20
    set_learning_rates(RunConfig(lr_schedule="cosine"), optimizer, step, total)
    factor = (1 + math.cos(math.pi * step / total)) / 2
    expected = [0.1 * factor, 0.004 * factor]
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_cosine_ends_at_zero_and_depends_on_the_step_alone():
    optimizer, config = two_groups(), RunConfig(lr_schedule="cosine")
    set_learning_rates(config, optimizer, 10, 10)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0, 0.0], abs=1e-18)
    set_learning_rates(config, optimizer, 12, 10)  # past the end: stays at 0
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.0, 0.0], abs=1e-18)
    for step in (7, 3, 0):  # any order: each from the initial lr, not from the last
        set_learning_rates(config, optimizer, step, 10)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.004]
    assert [g["initial_lr"] for g in optimizer.param_groups] == [0.1, 0.004]


@pytest.mark.parametrize("schedule", [None, "constant", "plateau"])
def test_no_per_step_schedule_leaves_the_lrs(schedule):
    optimizer = two_groups()
    for step in (0, 5, 20):
        set_learning_rates(RunConfig(lr_schedule=schedule, patience=2), optimizer, step, 20)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.004]
    assert all("initial_lr" not in g for g in optimizer.param_groups)


@pytest.fixture
def splits(isolated):
    return load_dataset("fashion-mnist")


def test_cosine_training_differs_from_constant_and_constant_is_no_schedule(splits):
    settings = tiny_settings(epochs=2, device="cpu", lr=3e-3) | dict(loss="contrastive", miner="random")
    plain = train(RunConfig(**settings), splits, progress=False)
    constant = train(RunConfig(**settings, lr_schedule="constant"), splits, progress=False)
    cosine = train(RunConfig(**settings, lr_schedule="cosine"), splits, progress=False)
    assert torch.equal(constant.test_embeddings, plain.test_embeddings)
    assert not torch.equal(cosine.test_embeddings, plain.test_embeddings)
    assert cosine.history[-1]["loss"] != plain.history[-1]["loss"]
    factor = lambda step: (1 + math.cos(math.pi * step / 6)) / 2  # noqa: E731  (2 epochs of 3 steps)
    assert [h["lr"] for h in cosine.history[1:]] == pytest.approx([3e-3 * factor(2), 3e-3 * factor(5)], rel=1e-12)
    assert [h["lr"] for h in plain.history[1:]] == [3e-3, 3e-3]


def test_a_resumed_cosine_run_ends_with_the_uninterrupted_numbers(splits, tmp_path):
    config = RunConfig(**tiny_settings(epochs=4, device="cpu", lr=3e-3), loss="proxy-anchor", miner="none",
                       lr_schedule="cosine")  # proxies: a second parameter group with its own lr
    whole = train(config, splits, progress=False)
    path = tmp_path / resume.RESUME_FILE
    with pytest.raises(Interrupted):
        train(config, splits, progress=False, checkpoint=path, on_epoch_end=stop_during(3))
    again = train(config, splits, progress=False, checkpoint=path)
    assert again.extra["resumed_after_epochs"] == [2]
    assert strip(again.history) == strip(whole.history) and again.test_metrics == whole.test_metrics
    assert torch.equal(again.test_embeddings, whole.test_embeddings)
