import pytest

from dmlbench.config import RunConfig
from dmlbench.datasets import DATASETS
from dmlbench.errors import ConfigError, UnknownNameError
from dmlbench.losses import LOSSES
from dmlbench.miners import MINERS


def test_hash_ignores_execution_only_settings_and_tracks_the_rest():
    base = RunConfig()
    assert RunConfig(device="cpu", data_root="/x", eval_batch_size=7).config_hash() == base.config_hash()
    assert RunConfig(lr=2e-3).config_hash() != base.config_hash()
    assert RunConfig(loss_kwargs={"margin": 0.1}).config_hash() != base.config_hash()
    assert RunConfig(seed=1).run_id() != base.run_id()
    assert base.run_id().startswith("fashion-mnist__triplet__semi-hard__seed0__")


def test_run_id_of_an_import_path_is_a_clean_folder_name():
    run_id = RunConfig(loss="my_losses:SquaredTripletLoss").run_id()
    assert run_id.startswith("fashion-mnist__squaredtripletloss__semi-hard__seed0__")
    assert "/" not in run_id and ":" not in run_id


@pytest.mark.parametrize("field,value,message", [
    ("loss", "tripletx", "valid loss names: " + ", ".join(LOSSES.names())),
    ("miner", "hardest", "valid miner names: " + ", ".join(MINERS.names())),
    ("dataset", "mnist", "valid dataset names: " + ", ".join(DATASETS.names())),
    ("model", "resnet", "valid model names: convnet"),
])
def test_unknown_names_fail_listing_valid_choices(field, value, message):
    with pytest.raises(UnknownNameError, match=message):
        RunConfig(**{field: value}).validate()


@pytest.mark.parametrize("changes,message", [
    ({"epochs": 0}, "epochs must be a positive integer"),
    ({"P": 2.5}, "P must be a positive integer"),
    ({"lr": -1.0}, "lr must be a positive number"),
    ({"device": "tpu"}, "valid choices: auto, cpu, cuda"),
    ({"select_metric": "nmi"}, "valid choices: map@r, recall@1"),
    ({"loss_kwargs": {"margn": 1}}, "takes no argument 'margn'"),
    ({"loss_kwargs": {"variant": "cube"}}, "valid variants: hinge, softplus"),
    ({"miner_kwargs": {"margin": -1}}, "margin must be positive"),
    ({"model_kwargs": {"channels": [1, 2]}}, "three positive integers"),
])
def test_bad_values_fail_naming_the_field(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes).validate()


def test_from_dict_rejects_unknown_settings():
    with pytest.raises(ConfigError, match="unknown setting 'epoch'; valid settings: dataset, loss"):
        RunConfig.from_dict({"epoch": 3})


def test_sampler_setting_is_checked_and_unset_keeps_old_run_ids():
    assert RunConfig(sampler=None).run_id() == RunConfig().run_id()
    assert RunConfig(sampler="random").run_id() != RunConfig().run_id()
    with pytest.raises(UnknownNameError, match="valid sampler names: hierarchical, pk, random"):
        RunConfig(sampler="balanced").validate()
    with pytest.raises(ConfigError, match="takes no argument 'supers'"):
        RunConfig(sampler="hierarchical", sampler_kwargs={"supers": 2}).validate()


def test_the_evaluation_protocol_is_part_of_a_runs_identity(monkeypatch):
    from dmlbench import config as config_module

    base = RunConfig()
    assert base.hashed_dict()["evaluation_protocol"] == config_module.EVALUATION_PROTOCOL
    before = base.run_id()
    monkeypatch.setattr(config_module, "EVALUATION_PROTOCOL", "a different evaluation")
    assert RunConfig().run_id() != before
