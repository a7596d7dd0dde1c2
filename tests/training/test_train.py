"""The training loop on the tiny dataset: seeded determinism and honest model selection."""

import pytest
import torch

import dmlbench.training.loop as train_module
from dmlbench.config import RunConfig
from dmlbench.datasets import load_dataset
from dmlbench.evaluation.metrics import evaluate
from dmlbench.training.loop import embed, image_tensor, train

from ..support import tiny_settings


@pytest.fixture
def splits(isolated):
    return load_dataset("fashion-mnist")


def test_same_seed_gives_identical_numbers_on_cpu(splits):
    config = RunConfig(**tiny_settings(epochs=3, device="cpu"), loss="contrastive", miner="random")
    a = train(config, splits, progress=False)
    b = train(config, splits, progress=False)
    assert a.test_metrics == b.test_metrics
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("time_s", "val_time_s")} for r in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    assert torch.equal(a.test_embeddings, b.test_embeddings)
    c = train(RunConfig(**tiny_settings(epochs=3, device="cpu", seed=1), loss="contrastive", miner="random"),
              splits, progress=False)
    assert not torch.equal(a.test_embeddings, c.test_embeddings)


def test_tested_model_is_the_best_validation_epoch_and_test_is_scored_once(splits, monkeypatch):
    calls = []

    def counting_evaluate(embeddings, labels, **kwargs):
        calls.append(sorted(set(torch.as_tensor(labels).tolist())))
        return evaluate(embeddings, labels, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", counting_evaluate)
    config = RunConfig(**tiny_settings(epochs=4, device="cpu", lr=3e-3), loss="triplet", miner="batch-hard")
    result = train(config, splits, progress=False)

    test_classes = splits.test.classes
    assert calls.count(test_classes) == 1 and calls[-1] == test_classes  # once, at the end
    assert calls.count(splits.val.classes) == config.epochs + 1  # epoch 0 and every epoch
    scores = {h["epoch"]: h["val_map@r"] for h in result.history if h["epoch"] >= 1}
    assert result.best_epoch == max(scores, key=scores.get)
    # The weights in hand are that epoch's: re-embedding validation reproduces its score.
    val_x = image_tensor(splits.val.images, splits.mean, splits.std, torch.device("cpu"))
    again = evaluate(embed(result.model, val_x), torch.from_numpy(splits.val.labels), ks=(1,), nmi=False)
    assert again["map@r"] == pytest.approx(scores[result.best_epoch], abs=1e-12)
    assert set(result.test_metrics) >= {"recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r", "nmi"}


def test_training_improves_over_the_untrained_network(splits):
    config = RunConfig(**tiny_settings(epochs=4, iters_per_epoch=8, lr=3e-3, device="cpu"), loss="triplet",
                       miner="semi-hard")
    result = train(config, splits, progress=False)
    assert result.history[result.best_epoch]["val_map@r"] > result.history[0]["val_map@r"]


def test_diverging_loss_fails_with_a_clear_error(splits, monkeypatch):
    config = RunConfig(**tiny_settings(device="cpu"), loss="triplet", miner="none")
    from dmlbench.losses import TripletMarginLoss

    monkeypatch.setattr(TripletMarginLoss, "terms", lambda self, e, l, t: {"triplet": e.sum(dim=1) * float("nan")})
    with pytest.raises(FloatingPointError, match="training diverged"):
        train(config, splits, progress=False)


def test_validation_never_finite_tests_the_last_epoch(splits, monkeypatch):
    nan = float("nan")
    monkeypatch.setattr(train_module, "validation_metrics", lambda *a: {"val_recall@1": nan, "val_map@r": nan})
    result = train(RunConfig(**tiny_settings(device="cpu")), splits, progress=False)
    assert result.best_epoch == 2 and result.test_metrics["recall@1"] >= 0


def test_samplers_by_name_in_training(splits):
    from dmlbench.errors import ConfigError

    result = train(RunConfig(**tiny_settings(device="cpu"), sampler="random", loss="contrastive", miner="none"),
                   splits, progress=False)
    assert len(result.history) == 3
    with pytest.raises(ConfigError, match="needs super-class labels, and this dataset has none; valid samplers"):
        train(RunConfig(**tiny_settings(device="cpu"), sampler="hierarchical"), splits, progress=False)


def test_torch_compile_trains_the_same_network(splits):
    settings = tiny_settings(epochs=1, iters_per_epoch=2, device="cpu", precision="fp32")
    plain = train(RunConfig(**settings, loss="contrastive", miner="none"), splits, progress=False)
    compiled = train(RunConfig(**settings, loss="contrastive", miner="none", torch_compile=True), splits,
                     progress=False)
    # compiled kernels round differently: close numbers, but another run (its own id)
    assert compiled.config.run_id() != plain.config.run_id()
    assert compiled.history[1]["loss"] == pytest.approx(plain.history[1]["loss"], rel=1e-4)
    assert torch.allclose(compiled.test_embeddings, plain.test_embeddings, atol=1e-4)
    assert set(compiled.model.state_dict()) == set(plain.model.state_dict())  # no "_orig_mod." prefixes


def test_the_loss_gets_fp32_embeddings_from_a_network_that_returns_bf16_under_autocast():
    """The CPU reproduction of a CUDA hazard: under bf16 autocast a network whose last layer is a
    Linear returns bf16; the miner and the loss must still compute in fp32."""
    from dmlbench.criterion import build_criterion
    from dmlbench.training.loop import make_optimizer, optimisation_step

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert network(torch.randn(2, 3, 4, 4)).dtype == torch.bfloat16
    criterion = build_criterion("triplet", "semi-hard", {}, {}, seed=0, num_classes=4, embedding_dim=16)
    seen = []
    forward = criterion.forward
    criterion.forward = lambda embeddings, labels: seen.append(embeddings.dtype) or forward(embeddings, labels)
    optimizer = make_optimizer("adam", [{"params": list(network.parameters())}], 1e-3, 0.0)
    loss = optimisation_step(network, criterion, optimizer, torch.amp.GradScaler("cpu", enabled=False),
                             torch.randn(16, 3, 4, 4), torch.arange(4).repeat_interleave(4), torch.bfloat16)
    assert seen == [torch.float32] and loss.dtype == torch.float32 and torch.isfinite(loss)


def test_the_loss_parameters_get_their_own_weight_decay_and_learning_rate():
    """Proxies etc. train without the network's weight decay (None: none, as Roth et al.'s code) unless
    loss_weight_decay is set; the network's group keeps weight_decay."""
    from dmlbench.config import RunConfig
    from dmlbench.models import MODELS
    from dmlbench.training.loop import build_run_criterion, make_optimizer, optimiser_groups

    for loss_weight_decay, expected in ((None, 0.0), (1e-3, 1e-3)):
        config = RunConfig(loss="proxy-anchor", miner="none", weight_decay=5e-4, loss_weight_decay=loss_weight_decay)
        model = MODELS.create("convnet", embedding_dim=8)
        criterion = build_run_criterion(config, num_classes=3)
        optimizer = make_optimizer("adam", optimiser_groups(config, model, criterion), config.lr, config.weight_decay)
        network, proxies = optimizer.param_groups
        assert network["weight_decay"] == 5e-4 and network["lr"] == 1e-3
        assert proxies["weight_decay"] == expected and proxies["lr"] == pytest.approx(0.1)  # 100 x lr
