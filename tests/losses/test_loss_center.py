"""Center loss (+ softmax) against a brute-force loop, and the paper's centre update on a hand-worked case.

pytorch-metric-learning has no center loss, so there is no library oracle here."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from dmlbench.criterion import build_criterion
from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.losses.center import CenterLoss

from ..support import assert_same_value_and_grads, batch_with_weights, value_and_grads


batch = partial(batch_with_weights, weight_scale=0.5)  # raw embeddings, labels, centres at half their scale


def brute_center_loss(x, labels, weight, bias, centers, lambda_c):
    """mean_i -log softmax(W x_i + b)_{y_i} + lambda/2 * mean_i |x_i - c_{y_i}|^2, one sample at a time."""
    softmax_total, center_total = 0.0, 0.0
    for i in range(len(x)):
        exps = [torch.exp(torch.dot(weight[c], x[i]) + bias[c]) for c in range(len(weight))]
        softmax_total = softmax_total - torch.log(exps[int(labels[i])] / sum(exps))
        center_total = center_total + sum((x[i][d] - centers[int(labels[i])][d]) ** 2 for d in range(len(x[i])))
    return softmax_total / len(x) + lambda_c / 2 * center_total / len(x)


@pytest.mark.parametrize("lambda_c", [0.003, 0.5])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_value_and_gradients_match_loop(lambda_c, training, dtype):
    x, labels, centers = batch(n=12, dim=6, classes=4, seed=1, dtype=dtype)
    loss = CenterLoss(4, 6, lambda_c=lambda_c).to(dtype)
    loss.centers.copy_(centers)
    loss.train(training)
    weight = torch.nn.Parameter(loss.classifier.weight.detach().clone())
    bias = torch.nn.Parameter(loss.classifier.bias.detach().clone())
    # gradients with respect to the normalised embeddings; ours backpropagates after its in-place centre
    # update (training), which must not disturb autograd; the loop sees the centres before the update
    assert_same_value_and_grads(lambda e: loss(e, labels),
                                lambda e: brute_center_loss(e, labels, weight, bias, centers, lambda_c),
                                F.normalize(x), (loss.classifier.weight, loss.classifier.bias), (weight, bias))
    assert torch.equal(loss.centers, centers) != training  # updated in training mode only


def test_centre_update_on_a_hand_worked_case():
    """alpha = 0.5, three classes in 2-D, a batch of classes 0, 0, 1 (class 2 absent).

    Step 1, centres c0 = (0, 0), c1 = (1, 1), c2 = (2, -2); batch x = (1, 0) [0], (0, 1) [0], (3, 1) [1]:
      class 0: n = 2, sum(c0 - x_i) = (0-1 + 0-0, 0-0 + 0-1) = (-1, -1), delta = (-1, -1) / 3,
               c0 = (0, 0) - 0.5 * (-1/3, -1/3) = (1/6, 1/6)
      class 1: n = 1, c1 - x = (1-3, 1-1) = (-2, 0), delta = (-2, 0) / 2 = (-1, 0),
               c1 = (1, 1) - 0.5 * (-1, 0) = (1.5, 1)
      class 2: n = 0, delta = 0, c2 stays (2, -2)
    Step 2, the same batch again:
      class 0: sum(c0 - x_i) = (1/6-1 + 1/6-0, 1/6-0 + 1/6-1) = (-2/3, -2/3), delta = (-2/9, -2/9),
               c0 = (1/6 + 1/9, 1/6 + 1/9) = (5/18, 5/18)
      class 1: c1 - x = (1.5-3, 1-1) = (-1.5, 0), delta = (-0.75, 0), c1 = (1.5 + 0.375, 1) = (1.875, 1)
    """
    loss = CenterLoss(num_classes=3, embedding_dim=2, alpha=0.5).double()
    loss.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, -2.0]]))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 1.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1])
    loss.train()
    loss(x, labels)
    expected = torch.tensor([[1 / 6, 1 / 6], [1.5, 1.0], [2.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(loss.centers, expected, rtol=0, atol=1e-12)
    loss(x, labels)
    expected = torch.tensor([[5 / 18, 5 / 18], [1.875, 1.0], [2.0, -2.0]], dtype=torch.float64)
    torch.testing.assert_close(loss.centers, expected, rtol=0, atol=1e-12)


def test_no_centre_update_in_eval_mode_and_same_value_as_training():
    x, labels, centers = batch(n=10, dim=4, classes=3, seed=2)
    loss = CenterLoss(3, 4)
    loss.centers.copy_(centers)
    loss.eval()
    eval_value = loss(F.normalize(x), labels)
    assert torch.equal(loss.centers, centers)
    loss.train()
    train_value = loss(F.normalize(x), labels)  # computed with the centres before its own update
    assert not torch.equal(loss.centers, centers)
    torch.testing.assert_close(eval_value, train_value, rtol=0, atol=0)


def test_centres_are_a_buffer_in_the_state_dict_not_a_parameter():
    loss = CenterLoss(num_classes=5, embedding_dim=4)
    names = [name for name, _ in loss.named_parameters()]
    assert names == ["classifier.weight", "classifier.bias"]
    assert "centers" in loss.state_dict() and loss.state_dict()["centers"].shape == (5, 4)
    criterion = build_criterion("center", num_classes=5, embedding_dim=4)
    groups = criterion.param_groups(lr=0.1)
    assert len(groups) == 1 and groups[0]["lr"] == 0.1
    assert {id(p) for p in groups[0]["params"]} == {id(criterion.loss.classifier.weight), id(criterion.loss.classifier.bias)}
    restored = CenterLoss(num_classes=5, embedding_dim=4)
    restored.load_state_dict(loss.state_dict())
    assert torch.equal(restored.centers, loss.centers)


def test_defaults_and_registration():
    loss = CenterLoss(num_classes=10, embedding_dim=300)
    assert loss.lambda_c == 0.003 and loss.alpha == 0.5 and loss.reduction == "mean"
    assert loss.consumes == "batch" and loss.needs_positives is False and loss.param_lr_scale == 1.0
    assert loss.classifier.bias is not None and loss.centers.requires_grad is False
    bound = (3 / 300) ** 0.5  # Xavier uniform: centres of about unit norm
    assert loss.centers.abs().max() <= bound and 0.8 < loss.centers.norm(dim=1).mean() < 1.2
    assert LOSSES.get("center") is CenterLoss


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ConfigError, match="lambda_c .* must be >= 0, got -1"):
        CenterLoss(5, 8, lambda_c=-1)
    with pytest.raises(ConfigError, match=r"alpha .* must be in \[0, 1\], got 1.5"):
        CenterLoss(5, 8, alpha=1.5)
    with pytest.raises(ConfigError, match=r"alpha .* must be in \[0, 1\], got -0.1"):
        CenterLoss(5, 8, alpha=-0.1)
    with pytest.raises(ConfigError, match="num_classes=0"):
        CenterLoss(0, 8)
    with pytest.raises(ConfigError, match="valid reductions"):
        CenterLoss(5, 8, reduction="median")


def test_finite_gradients_with_duplicates_and_an_embedding_on_its_centre():
    x, labels, centers = batch(n=16, dim=8, classes=4, seed=3)
    x[1] = x[0]
    labels[1] = labels[0]
    x[2] = centers[labels[2]]
    loss = CenterLoss(4, 8)
    loss.centers.copy_(F.normalize(centers))
    value, gx, gw = value_and_grads(lambda e: loss(e, labels), F.normalize(x), loss.classifier.weight)
    assert torch.isfinite(value) and torch.isfinite(gx).all() and gx.abs().sum() > 0
    assert torch.isfinite(gw).all() and torch.isfinite(loss.centers).all()


def test_training_pulls_embeddings_towards_centres():
    """A few SGD steps on free embeddings with a large lambda shrink the distance to the centres."""
    torch.manual_seed(4)
    x, labels, _ = batch(n=20, dim=4, classes=3, seed=4)
    loss = CenterLoss(3, 4, lambda_c=1.0)
    emb = torch.nn.Parameter(x.clone())
    opt = torch.optim.SGD([emb, *loss.parameters()], lr=0.1)

    def spread():
        return (emb.detach() - loss.centers[labels]).pow(2).sum(dim=1).mean().item()

    before = spread()
    for _ in range(30):
        opt.zero_grad()
        loss(emb, labels).backward()
        opt.step()
    assert spread() < 0.5 * before
