"""Protocol presets (roth2020, mlrc) and the real benchmarks' study files."""

import pytest
import torch
import yaml

from dmlbench.config import RunConfig
from dmlbench.errors import ConfigError
from dmlbench.models.backbone import cached_weights_path
from dmlbench.paths import REPO_ROOT
from dmlbench.presets import PRESETS, apply_preset, deviations
from dmlbench.study.cells import load_study

BENCHMARK_STUDIES = ("cub", "cars196", "sop", "inshop")


def test_roth2020_and_mlrc_carry_the_papers_settings():
    roth, mlrc = PRESETS["roth2020"].settings, PRESETS["mlrc"].settings
    assert (roth["model"], roth["embedding_dim"], roth["P"] * roth["K"], roth["K"]) == ("resnet50", 128, 112, 2)
    assert (roth["optimizer"], roth["lr"], roth["weight_decay"], roth["image_size"]) == ("adam", 1e-5, 4e-4, 224)
    assert (mlrc["embedding_dim"], mlrc["P"], mlrc["K"], mlrc["optimizer"], mlrc["lr"], mlrc["image_size"]) == \
        (128, 8, 4, "rmsprop", 1e-6, 227)
    for preset in PRESETS.values():
        assert preset.settings["model_kwargs"]["freeze_bn"] is True and preset.source
        settings = apply_preset({"preset": preset.name, "dataset": "cub", "model_kwargs": {"pretrained": False}})
        RunConfig(**settings).validate()


def test_settings_written_beside_a_preset_override_it():
    merged = apply_preset({"preset": "roth2020", "epochs": 5, "model_kwargs": {"pretrained": False}})
    assert merged["epochs"] == 5 and merged["lr"] == 1e-5 and merged["P"] == 56
    assert merged["model_kwargs"] == {"pretrained": False, "freeze_bn": True, "pooling": "avg"}
    assert deviations(merged) == ["model_kwargs.pretrained: False (preset True)", "epochs: 5 (preset 150)"]
    assert deviations(apply_preset({"preset": "mlrc"})) == [] and deviations({"lr": 1.0}) == []
    assert PRESETS["roth2020"].settings["epochs"] == 150  # the preset itself is untouched


def test_an_unknown_preset_names_the_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'roth'; valid presets: roth2020, mlrc"):
        RunConfig(dataset="cub", preset="roth").validate()
    study = tmp_path / "bad.yaml"
    study.write_text(yaml.safe_dump({"datasets": ["cub"], "losses": ["triplet"], "miners": ["random"],
                                     "settings": {"preset": "reality-check"}}))
    with pytest.raises(ConfigError, match="settings: preset: unknown preset 'reality-check'"):
        load_study(study)


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory):
    """torchvision's ResNet-50 weight file where torch.hub keeps it (random values: only the loading is tested)."""
    import torchvision

    home = tmp_path_factory.mktemp("torch-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCH_HOME", str(home))
        path, _ = cached_weights_path("resnet50")
    path.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    return home


@pytest.mark.parametrize("name", BENCHMARK_STUDIES)
def test_benchmark_studies_load_with_the_preset(name, imagenet_weights, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(imagenet_weights))
    study = load_study(REPO_ROOT / "studies" / f"{name}.yaml")
    assert not study.skipped and len(study.cells) == 12 * 3
    for cell in study.cells:
        config = cell.config
        assert config.dataset == name and config.preset == "roth2020" and deviations(config.to_dict()) == []
        assert (config.model, config.P, config.K, config.lr, config.image_size) == ("resnet50", 56, 2, 1e-5, 224)
    assert sorted({c.config.seed for c in study.cells}) == [0, 1, 2]


def test_benchmark_studies_fail_before_running_without_the_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="ImageNet weights expected at .*resnet50-.*download.pytorch.org"):
        load_study(REPO_ROOT / "studies" / "cub.yaml")


def test_loss_parameters_get_no_weight_decay_and_rotts_learning_rates_under_roth2020():
    settings = apply_preset({"preset": "roth2020", "dataset": "cub", "model_kwargs": {"pretrained": False}})
    margin = RunConfig(**settings, loss="margin", miner="distance-weighted").loss_parameter_settings()
    assert margin["weight_decay"] == 0.0 and margin["lr"] == pytest.approx(5e-4)  # Roth's loss_margin_beta_lr
    softmax = RunConfig(**settings, loss="normalized-softmax", miner="none").loss_parameter_settings()
    assert softmax["lr"] == pytest.approx(1e-5)  # loss_softmax_lr
    anchor = RunConfig(**settings, loss="proxy-anchor", miner="none").loss_parameter_settings()
    assert anchor["lr_scale"] == 100.0  # not in Roth's code: its paper's factor
    assert RunConfig(**settings, loss="margin", miner="distance-weighted", loss_lr=1e-3).loss_parameter_settings()["lr"] == 1e-3


def test_run_ids_change_exactly_where_the_loss_parameters_train_differently():
    base = dict(dataset="fashion-mnist", miner="none")
    # weight decay 0 (the default study): ids unchanged, the setting unset or set to what it was
    for loss in ("proxy-anchor", "triplet", "center"):
        config = RunConfig(**base, loss=loss)
        assert "loss_parameters" not in config.hashed_dict() and "loss_weight_decay" not in config.hashed_dict()
    assert RunConfig(**base, loss="proxy-nca").config_hash() == RunConfig(**base, loss="proxy-nca",
                                                                          loss_weight_decay=0.0).config_hash()
    # weight decay > 0 and a loss with parameters: the numbers change, so does the id
    decayed = RunConfig(**base, loss="proxy-nca", weight_decay=1e-4)
    assert decayed.hashed_dict()["loss_parameters"] == {"lr": 1e-3, "weight_decay": 0.0}
    same_as_before = RunConfig(**base, loss="proxy-nca", weight_decay=1e-4, loss_weight_decay=1e-4)
    assert "loss_parameters" not in same_as_before.hashed_dict()
    assert decayed.config_hash() != same_as_before.config_hash()
    # no trainable parameters (triplet; margin with a fixed beta): nothing changes, nothing is hashed
    for loss, kwargs in (("triplet", {}), ("margin", {"learn_beta": False})):
        config = RunConfig(**base, loss=loss, loss_kwargs=kwargs, weight_decay=1e-4)
        assert "loss_parameters" not in config.hashed_dict()
    with pytest.raises(ConfigError, match="loss_weight_decay must be a non-negative number or None"):
        RunConfig(loss_weight_decay=-1.0).validate()
