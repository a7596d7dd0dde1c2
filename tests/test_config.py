import pytest

from dmlbench.config import LR_SCHEDULES, RunConfig
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


# -- lr_schedule, patience, min_delta, augment ------------------------------------------------------

NEW_SETTINGS = ("lr_schedule", "patience", "min_delta", "augment")


@pytest.mark.parametrize("changes,message", [
    ({"lr_schedule": "step"}, "unknown lr_schedule 'step'; valid choices: " + ", ".join(LR_SCHEDULES) + "$"),
    ({"lr_schedule": "Cosine"}, "valid choices: constant, cosine"),
    ({"lr_schedule": "plateau"}, "lr_schedule 'plateau' drops the learning rate on a validation plateau: set patience"),
    ({"patience": 0}, "patience must be a positive integer, got 0"),
    ({"patience": 2.0}, "patience must be a positive integer"),
    ({"patience": True}, "patience must be a positive integer"),
    ({"min_delta": 0.01}, r"needs patience set, got min_delta=0.01, patience=None"),
    ({"patience": 2, "min_delta": 1.0}, r"min_delta must be a number in \[0, 1\)"),
    ({"patience": 2, "min_delta": -0.1}, r"min_delta must be a number in \[0, 1\)"),
    ({"patience": 2, "min_delta": "0.1"}, r"min_delta must be a number in \[0, 1\)"),
    ({"augment": {"flip": 1}}, "unknown augmentation 'flip'; valid augmentations: rotate .*scale .*shift .*"
                               "shear .*stroke "),
    ({"augment": ["rotate"]}, "augment must be a mapping.*valid augmentations: rotate, scale, shift, shear, stroke"),
    ({"augment": {"rotate": -5}}, "augment rotate=-5: expected a number from 0 to 180"),
    ({"augment": {"scale": 1.0}}, "augment scale=1.0: expected a number from 0 to 1 \\(excluded\\)"),
    ({"augment": {"shear": 90}}, "augment shear=90: expected a number from 0 to 90 \\(excluded\\)"),
    ({"augment": {"shift": 300}}, "augment shift=300: expected a number from 0 to 1"),
    ({"augment": {"stroke": 1.5}}, "augment stroke=1.5"),
    ({"augment": {"scale": True}}, "augment scale=True"),
])
def test_bad_new_settings_fail_naming_the_problem(changes, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**changes).validate()


@pytest.mark.parametrize("dataset", ["cub", "sop"])
def test_augment_is_refused_for_photo_datasets(dataset):
    with pytest.raises(ConfigError, match=f"augment applies to in-memory grey datasets; '{dataset}'"):
        RunConfig(dataset=dataset, augment={"rotate": 5}).validate()


@pytest.mark.parametrize("changes", [
    {"lr_schedule": "constant"}, {"lr_schedule": "cosine"}, {"lr_schedule": "plateau", "patience": 2},
    {"patience": 1}, {"patience": 3, "min_delta": 0.0},
    {"patience": 3, "min_delta": 0.5}, {"augment": {}},
    {"augment": {"rotate": 8, "scale": 0.1, "shift": 0.05, "shear": 5, "stroke": 0.5}}, {"augment": {"stroke": 1}},
])
def test_good_new_settings_pass(changes):
    RunConfig(**changes).validate()


def test_new_settings_enter_the_hash_when_set_and_are_absent_when_none():
    base = RunConfig()
    assert not set(NEW_SETTINGS) & set(base.hashed_dict())
    assert RunConfig(lr_schedule=None, patience=None, min_delta=None, augment=None).run_id() == base.run_id()
    set_values = [{"lr_schedule": "cosine"}, {"patience": 2}, {"patience": 2, "min_delta": 0.1},
                  {"augment": {"rotate": 8}}, {"augment": {"rotate": 4}}]
    ids = {RunConfig(**changes).run_id() for changes in set_values} | {base.run_id()}
    assert len(ids) == len(set_values) + 1  # every setting and value its own run
    for changes in set_values:
        hashed = RunConfig(**changes).hashed_dict()
        assert all(hashed[name] == value for name, value in changes.items())
