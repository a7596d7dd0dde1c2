"""Pretraining the glyph backbone, and fine-tuning it: deterministic recipe, weights in the run's identity,
the trunk's own learning rate and warm-up."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from dmlbench.config import RunConfig
from dmlbench.datasets import load_dataset
from dmlbench.errors import ConfigError
from dmlbench.models import MODELS
from dmlbench.models.glyphnet import PRETRAINED_VARIABLE, weights_sha256
from dmlbench.training.loop import network_groups, set_learning_rates, train
from dmlbench.training.pretrain import Recipe, current, held_out_rows, pretrain, save_backbone, state_sha256

from ..support import tiny_settings

TINY = Recipe(widths=(4, 8, 8), epochs=2, batch_size=16, threads=1)


def generated_pool(classes=12, per_class=5, seed=0) -> dict:
    """Glyph-like images: each class a bar at its own row and column, over noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(100, 100 + classes), per_class)
    images = rng.integers(0, 40, size=(len(labels), 24, 24)).astype(np.uint8)
    for i, c in enumerate(labels - 100):
        images[i, 2 + c:4 + c, 3:21] = 230
        images[i, 3:21, 20 - c:21 - c] = 200
    return {"images": images, "labels": labels, "faces": np.zeros(len(labels), np.int64)}


def test_the_recipe_is_deterministic_at_a_thread_count_and_the_seed_matters():
    pool = generated_pool()
    first, again = pretrain(pool, TINY), pretrain(pool, TINY)
    assert state_sha256(first["trunk"]) == state_sha256(again["trunk"])
    other = pretrain(pool, dataclasses.replace(TINY, seed=1))
    assert state_sha256(other["trunk"]) != state_sha256(first["trunk"])
    assert 0.0 <= first["accuracy"] <= 1.0 and first["classes"] == 12


def test_one_rendering_per_character_is_held_out():
    labels = np.array([5, 5, 7, 5, 7, 9])
    assert held_out_rows(labels).tolist() == [False, False, False, True, True, True]


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A tiny backbone saved as `dmlbench pretrain` saves one, in a temporary pretrained/ folder."""
    monkeypatch.setenv(PRETRAINED_VARIABLE, str(tmp_path / "pretrained"))
    made = pretrain(generated_pool(), TINY)
    facts = {"key": "k", "content": "c", "typefaces": ["a.ttf#0"]}
    entry = save_backbone(tmp_path / "pretrained" / "han-typefaces", 0, made, TINY, facts)
    return made, entry, facts, tmp_path / "pretrained" / "han-typefaces"


def test_the_network_loads_the_saved_trunk_and_its_hash_is_in_the_run_id(shipped):
    made, entry, facts, folder = shipped
    model = MODELS.create("pretrained-glyphnet", embedding_dim=8, fold=0)
    for name, tensor in model.trunk.state_dict().items():
        assert torch.equal(tensor, made["trunk"][name]), name
    assert weights_sha256("han-typefaces", 0) == entry["file_sha256"]
    assert current(folder, 0, TINY, facts) and not current(folder, 0, dataclasses.replace(TINY, epochs=3), facts)
    config = RunConfig(dataset="han-typefaces", model="pretrained-glyphnet", fold=0)
    assert config.hashed_dict()["model_weights"] == entry["file_sha256"]
    before = config.run_id()
    save_backbone(folder, 0, pretrain(generated_pool(), dataclasses.replace(TINY, seed=3)), TINY, facts)
    assert RunConfig(dataset="han-typefaces", model="pretrained-glyphnet", fold=0).run_id() != before
    assert "model_weights" not in RunConfig(dataset="han-typefaces").hashed_dict()


def test_missing_weights_name_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv(PRETRAINED_VARIABLE, str(tmp_path))
    with pytest.raises(ConfigError, match="make pretrain"):
        MODELS.create("pretrained-glyphnet", embedding_dim=8, fold=2)


def test_trunk_and_head_get_their_own_groups_and_the_warm_up_holds_the_trunk():
    model = MODELS.create("glyph-resnet", embedding_dim=8, widths=[4, 8, 8], freeze_bn=True)
    config = RunConfig(lr=0.01, trunk_lr=0.002, warmup_epochs=1, epochs=4, iters_per_epoch=5, lr_schedule="cosine")
    groups = network_groups(config, model)
    trunk = {id(p) for p in model.trunk.parameters() if p.requires_grad}
    assert {id(p) for p in groups[0]["params"]} == trunk and groups[0]["lr"] == 0.002
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head.parameters()}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and m.weight.requires_grad for m in model.trunk.modules())
    optimizer = torch.optim.Adam(groups, lr=0.01)
    for step, trunk_lr in ((0, 0.0), (4, 0.0)):
        set_learning_rates(config, optimizer, step, 20)
        assert optimizer.param_groups[0]["lr"] == trunk_lr
        assert optimizer.param_groups[1]["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * step / 20)) / 2)
    set_learning_rates(config, optimizer, 5, 20)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.002 * (1 + math.cos(math.pi * 5 / 20)) / 2)
    constant = RunConfig(lr=0.01, warmup_epochs=1, epochs=4, iters_per_epoch=5)
    optimizer = torch.optim.Adam(network_groups(constant, model), lr=0.01)
    set_learning_rates(constant, optimizer, 3, 20)
    assert optimizer.param_groups[0]["lr"] == 0.0
    set_learning_rates(constant, optimizer, 5, 20)
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[1]["lr"] == 0.01
    assert len(network_groups(RunConfig(), model)) == 1


@pytest.mark.parametrize("bad", [{"trunk_lr": -1.0}, {"trunk_lr": "fast"}, {"warmup_epochs": 8}, {"warmup_epochs": 1.5}])
def test_bad_fine_tuning_settings_are_refused(bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        RunConfig(epochs=8, **bad).check_settings()


def test_fine_tuning_with_a_frozen_trunk_trains_the_head_only(shipped, isolated):
    made = shipped[0]
    settings = tiny_settings(epochs=2, device="cpu") | dict(model="pretrained-glyphnet", model_kwargs={"freeze_bn": True},
                                                            loss="contrastive", miner="random", trunk_lr=0.0)
    result = train(RunConfig(**settings), load_dataset("fashion-mnist"), progress=False)
    for name, tensor in result.model.trunk.state_dict().items():
        assert torch.equal(tensor, made["trunk"][name]), name
    moving = train(RunConfig(**settings | {"trunk_lr": 1e-2}), load_dataset("fashion-mnist"), progress=False)
    assert any(not torch.equal(t, made["trunk"][n]) for n, t in moving.model.trunk.state_dict().items())


def test_a_study_without_a_pretrained_network_pretrains_nothing(capsys):
    from dmlbench.cli import main

    assert main(["pretrain", "--study", "studies/default.yaml"]) == 0
    assert "nothing to pretrain" in capsys.readouterr().out


def test_the_baselines_of_a_pretrained_network_are_its_features_and_its_architecture_untrained(shipped, isolated):
    from dmlbench.evaluation.metrics import evaluate
    from dmlbench.study.baselines import baselines_for, compute
    from dmlbench.training.feeds import image_tensor

    config = RunConfig(**tiny_settings(device="cpu") | dict(model="pretrained-glyphnet", model_kwargs={}, precision="fp32"))
    kinds = {b.kind: b for b in baselines_for([config])}
    assert set(kinds) == {"raw pixels", "untrained network", "pretrained features"}
    assert kinds["untrained network"].config.model == "glyph-resnet"
    assert kinds["pretrained features"].config.model == "pretrained-glyphnet"
    splits = load_dataset("fashion-mnist")
    record = compute(kinds["pretrained features"], splits)
    model = MODELS.create("pretrained-glyphnet", embedding_dim=8, fold=0).eval()
    with torch.no_grad():
        features = model.trunk(image_tensor(splits.test.images, splits.mean, splits.std, torch.device("cpu")))
    expected = evaluate(features.float(), torch.from_numpy(splits.test.labels), ks=(1, 2, 4, 8))
    assert features.shape[1] == 8 and record["test"]["map@r"] == pytest.approx(expected["map@r"], abs=1e-6)
