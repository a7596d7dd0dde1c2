"""`pml:<ClassName>`: any pytorch-metric-learning loss behind the study's loss interface."""

import pytest
import torch
import torch.nn.functional as F

from dmlbench.config import RunConfig
from dmlbench.criterion import build_criterion, compatible_miners
from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES, ContrastiveLoss

from ..support import batch


def test_pml_contrastive_equals_ours_with_and_without_a_miner():
    x, labels = batch(n=32, dim=16, classes=4, seed=1)
    x = F.normalize(x, dim=1)
    for miner in ("none", "batch-hard", "multi-similarity"):
        ours = build_criterion("contrastive", miner, {"pos_margin": 0.1, "neg_margin": 0.9}, seed=0)(x, labels)
        theirs = build_criterion("pml:ContrastiveLoss", miner, {"pos_margin": 0.1, "neg_margin": 0.9}, seed=0)(x, labels)
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-6)
    assert isinstance(LOSSES.create("contrastive"), ContrastiveLoss)


def test_pml_losses_with_class_parameters_get_them_from_the_run_and_train():
    criterion = build_criterion("pml:ProxyAnchorLoss", "none", num_classes=4, embedding_dim=16)
    assert len(criterion.param_groups(1e-3)) == 1  # the proxies are optimised with the model
    x, labels = batch(n=32, dim=16, classes=4, seed=2)
    x.requires_grad_(True)
    criterion(F.normalize(x, dim=1), labels).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert compatible_miners("pml:TripletMarginLoss") == compatible_miners("contrastive")


def test_unknown_pml_loss_lists_the_librarys_losses():
    with pytest.raises(ConfigError, match="pytorch-metric-learning has no loss 'TripletLoss'; its losses: .*TripletMarginLoss"):
        RunConfig(loss="pml:TripletLoss", miner="none").validate()
    run_id = RunConfig(loss="pml:TripletMarginLoss", miner="none").validate().run_id()
    assert run_id.startswith("fashion-mnist__pml-tripletmarginloss__none__")
