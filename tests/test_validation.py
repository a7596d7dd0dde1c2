"""Bad input on every path a user types something: run settings (study file, notebook parameters,
``--set``), study files, command-line flags and data roots. Each error names the field, the value and
the valid choices, and comes before anything runs or is written."""

import json
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
import yaml

from dmlbench.cli import main
from dmlbench.config import RunConfig, settings_from_text
from dmlbench.errors import ConfigError
from dmlbench.paths import REPO_ROOT, notebook
from dmlbench.study.cells import load_study

from .support import tiny_settings

# (setting, bad value, what the message must contain besides the setting's name)
BAD_SETTINGS = [
    ("dataset", "mnist", ["'mnist'", "cars196, cub, fashion-mnist, han-typefaces, inshop, sop"]),
    ("dataset", 5, ["5", "fashion-mnist"]),
    ("loss", "tripplet", ["'tripplet'", "did you mean 'triplet'", "proxy-anchor"]),
    ("miner", "hardest", ["'hardest'", "semi-hard", "distance-weighted"]),
    ("model", "resnet", ["'resnet'", "resnet50", "convnet"]),
    ("sampler", "pkk", ["'pkk'", "hierarchical, pk, random"]),
    ("optimizer", "adamm", ["'adamm'", "adam, adamw, sgd, rmsprop"]),
    ("select_metric", "nmi", ["'nmi'", "map@r, recall@1"]),
    ("device", "gpu", ["'gpu'", "auto, cpu, cuda"]),
    ("preset", "roth", ["'roth'", "roth2020, mlrc"]),
    ("epochs", 0, ["got 0", "positive integer"]),
    ("P", "5", ["got '5'", "positive integer"]),
    ("embedding_dim", 1.5, ["got 1.5", "positive integer"]),
    ("iters_per_epoch", -1, ["got -1", "non-negative integer"]),
    ("lr", "fast", ["lr must be a positive number, got 'fast'"]),
    ("lr", 0, ["lr must be a positive number, got 0"]),
    ("weight_decay", None, ["got None", "non-negative number"]),
    ("loss_lr", -1, ["got -1", "positive number or None"]),
    ("seed", -3, ["got -3", "non-negative integer"]),
    ("eval_batch_size", 0, ["got 0", "positive integer"]),
    ("num_workers", -1, ["got -1", "non-negative integer or None"]),
    ("torch_compile", "yes", ["got 'yes'", "true, false or None"]),
    ("image_size", 224, ["image_size=224", "cub, cars196, sop, inshop", "leave it None"]),
    ("processes", 3, ["processes=3", "P x K = 20", "valid choices: 1, 2, 4, 5, 10, 20"]),
    ("data_root", "/no/such/folder", ["'/no/such/folder' is not a folder", "None to search $DMLBENCH_DATA"]),
    ("data_root", 7, ["got 7", "folder path or None"]),
    ("loss_kwargs", {"margn": 0.1}, ["'margn'", "its arguments are: margin, variant, reduction"]),
    ("loss_kwargs", {"margin": "wide"}, ["{'margin': 'wide'}", "margin=0.2"]),
    ("loss_kwargs", [0.2], ["got [0.2]", "mapping"]),
    ("miner_kwargs", {"margin": "m"}, ["{'margin': 'm'}", "margin=0.2, selection='all'"]),
    ("model_kwargs", {"channels": "abc"}, ["'abc'", "channels=(32, 64, 128)"]),
    ("model_kwargs", {"depth": 3}, ["'depth'", "embedding_dim, channels, in_channels"]),
    ("sampler_kwargs", 3, ["got 3", "mapping"]),
    ("sampler_kwargs", {"P": 4}, ["'P'", "settings P, K and iters_per_epoch"]),
]
IDS = [f"{name}={value!r}" for name, value, _ in BAD_SETTINGS]


@pytest.mark.parametrize("name,value,parts", BAD_SETTINGS, ids=IDS)
def test_a_bad_setting_names_the_field_the_value_and_the_choices(isolated, name, value, parts):
    with pytest.raises(ConfigError) as error:
        RunConfig(**tiny_settings() | {name: value}).validate()
    message = str(error.value)
    assert name in message or name == "dataset" or name.endswith(("loss", "miner", "model", "sampler")), message
    for part in parts:
        assert part in message, message


def test_data_root_relative_to_the_repository_is_accepted(isolated):
    RunConfig(**tiny_settings(), data_root="dmlbench").validate()  # notebook kernels run in the repository


@pytest.mark.parametrize("name,value,parts", BAD_SETTINGS[::4], ids=IDS[::4])
def test_a_bad_setting_in_a_study_file_names_the_file_and_the_cell_and_runs_nothing(isolated, tmp_path, name, value,
                                                                                    parts):
    if name in ("dataset", "loss", "miner"):  # axes of the study, not settings
        study = {"datasets": [value] if name == "dataset" else ["fashion-mnist"],
                 "losses": [value] if name == "loss" else ["triplet"],
                 "miners": [value] if name == "miner" else ["semi-hard"], "settings": tiny_settings()}
    elif name in ("loss_kwargs", "miner_kwargs"):  # given beside each loss or miner
        study = {"datasets": ["fashion-mnist"], "settings": tiny_settings(),
                 "losses": {"triplet": value if name == "loss_kwargs" else {}},
                 "miners": {"semi-hard": value if name == "miner_kwargs" else {}}}
    else:
        study = {"datasets": ["fashion-mnist"], "losses": ["triplet"], "miners": ["semi-hard"],
                 "settings": tiny_settings() | {name: value}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(study))
    assert main(["study", str(path)]) == 2
    with pytest.raises(ConfigError) as error:
        load_study(path)
    message = str(error.value)
    assert str(path) in message and all(part in message for part in parts), message
    assert not (isolated / "results").exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("argv,parts", [
    (["run", "--set", "lose=triplet"], ["unknown setting 'lose'", "valid settings: dataset, loss, miner"]),
    (["run", "--set", "epochs"], ["--set expects key=value", "'epochs'"]),
    (["run", "--set", "loss_kwargs={margin: [1"], ["--set loss_kwargs: cannot parse"]),
    (["run", "--set", "optimizer=adamm"], ["'adamm'", "adam, adamw, sgd, rmsprop"]),
    (["run", "--set", "data_root=/no/such/folder"], ["data_root '/no/such/folder' is not a folder"]),
    (["run", "--study", "studies/default.yaml"], ["--study needs --cell"]),
    (["run", "--study", "studies/default.yaml", "--cell", "han-typefaces__triplet__semi-hard__fold0__seed0__0000000000"],
     ["no cell 'han-typefaces__triplet__semi-hard__fold0__seed0__0000000000'", "did you mean", "its cells:"]),
    (["study", "studies/nope.yaml"], ["study file studies/nope.yaml does not exist"]),
    (["report", "--study", "studies/nope.yaml"], ["study file studies/nope.yaml does not exist"]),
    (["data", "prepare", "mnist"], ["unknown dataset 'mnist'", "fashion-mnist"]),
    (["data", "locate", "fashion-mnist", "--root", "/no/such/folder"], ["/no/such/folder"]),
    (["data", "locate", "cub", "--root", "/no/such/folder"], ["/no/such/folder", "images.txt",
                                                               "dmlbench data prepare cub --root DIR"]),
])
def test_bad_command_lines_exit_2_with_the_problem_named(isolated, capsys, monkeypatch, argv, parts):
    monkeypatch.chdir(REPO_ROOT)
    assert main(argv) == 2
    message = capsys.readouterr().err
    assert all(part in message for part in parts), message


@pytest.mark.parametrize("argv,parts", [
    (["study", "studies/default.yaml", "--jobs", "0"], ["--jobs", "at least 1", "got '0'"]),
    (["study", "studies/default.yaml", "--executor", "pbs"], ["--executor", "'pbs'", "local", "submitit-local",
                                                              "slurm"]),
    (["study", "studies/default.yaml", "--estimate", "-3"], ["--estimate", "above 0", "got '-3'"]),
    (["data", "prepare", "cub", "--image-size", "0"], ["--image-size", "above 0", "got '0'"]),
    (["data", "wipe", "cub"], ["'wipe'", "locate", "prepare"]),
    (["list", "lossses"], ["'lossses'", "'losses', 'miners', 'samplers', 'datasets', 'models'"]),
])
def test_bad_flags_are_refused_by_the_parser_naming_the_choices(capsys, argv, parts):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    message = capsys.readouterr().err
    assert all(part in message for part in parts), message


@pytest.mark.parametrize("parameters,parts", [
    ({"lose": "triplet"}, ["unknown parameter 'lose'", "valid parameters: dataset, loss, miner"]),
    ({"optimizer": "adamm"}, ["unknown optimizer 'adamm'", "adam, adamw, sgd, rmsprop"]),
    ({"P": 6}, ["P=6", "valid range: 1 <= P <= 5"]),  # the data's check (dmlbench.study.preflight), in the same cell
])
def test_bad_notebook_parameters_stop_the_notebook_before_training(isolated, tmp_path, parameters, parts):
    """papermill straight on the experiment notebook, as a user may run it."""
    run_dir = tmp_path / "run"
    with pytest.raises(papermill.PapermillExecutionError) as error:
        papermill.execute_notebook(str(notebook("experiment.ipynb")), str(tmp_path / "out.ipynb"),
                                   parameters={**tiny_settings(), "run_dir": str(run_dir), **parameters},
                                   kernel_name="python3", cwd=str(REPO_ROOT), progress_bar=False)
    assert error.value.ename == "ConfigError"
    assert all(part in error.value.evalue for part in parts), error.value.evalue
    executed = json.loads((tmp_path / "out.ipynb").read_text())
    failed_at = [i for i, c in enumerate(executed["cells"]) if c.get("cell_type") == "code"
                 and any(o.get("output_type") == "error" for o in c.get("outputs", []))]
    assert failed_at and "RunConfig.from_dict" in "".join(executed["cells"][failed_at[0]]["source"])
    assert not run_dir.exists()  # nothing written


# papermill's command line hands `-p` values on as text unless they read as True, False, None or a number.
@pytest.mark.parametrize("given,read", [
    ({"loss_kwargs": '{"margin": 0.1}'}, {"loss_kwargs": {"margin": 0.1}}),
    ({"model_kwargs": "{channels: [4, 8, 8]}"}, {"model_kwargs": {"channels": [4, 8, 8]}}),  # YAML as well as JSON
    ({"miner_kwargs": "{}", "sampler_kwargs": "null"}, {"miner_kwargs": {}, "sampler_kwargs": None}),
    ({"sampler_kwargs": '{"super_per_batch": 2}'}, {"sampler_kwargs": {"super_per_batch": 2}}),
    ({"P": "5", "lr": "1e-3", "torch_compile": "false", "image_size": "None"},  # papermill -r, or text from a file
     {"P": 5, "lr": 0.001, "torch_compile": False, "image_size": None}),
    ({"loss": "my_losses:SquaredTripletLoss", "data_root": "None", "device": "cuda"},  # text settings stay text
     {"loss": "my_losses:SquaredTripletLoss", "data_root": "None", "device": "cuda"}),
    ({"lr": "fast", "K": "1.5", "torch_compile": "yes"},  # no value of the type: RunConfig.validate refuses it
     {"lr": "fast", "K": "1.5", "torch_compile": "yes"}),
    ({"loss_kwargs": {"margin": 0.1}, "epochs": 2, "run_dir": "x"}, {"loss_kwargs": {"margin": 0.1}, "epochs": 2,
                                                                     "run_dir": "x"}),
])
def test_notebook_parameters_given_as_text_are_read_as_their_settings_type(given, read):
    assert settings_from_text(given) == read


@pytest.mark.parametrize("text,parts", [
    ("[0.1]", ["loss_kwargs must be a mapping", "got the text '[0.1]'", "reads as [0.1]"]),
    ("0.1", ["loss_kwargs must be a mapping", "reads as 0.1"]),
    ('{"margin": 0.1', ["loss_kwargs: cannot read the text", "as a mapping (YAML or JSON)", "expected ',' or '}'"]),
])
def test_a_mapping_parameter_whose_text_is_no_mapping_fails_naming_it(text, parts):
    with pytest.raises(ConfigError) as error:
        settings_from_text({"loss_kwargs": text})
    assert all(part in str(error.value) for part in parts) and "\n" not in str(error.value), str(error.value)


def readme_my_losses() -> str:
    """The README's my_losses.py, as printed under its <!-- example:my_losses.py --> marker."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- example:my_losses.py -->", 1)[1].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


def test_the_readmes_papermill_command_with_a_mapping_parameter_runs(isolated, tmp_path):
    """The README's `papermill ... -p loss my_losses:SquaredTripletLoss -p loss_kwargs '{"margin": 0.1}'`,
    through papermill's own command line, made tiny by more -p options."""
    (tmp_path / "my_losses.py").write_text(readme_my_losses())  # beside the command, as the README has it
    readme = ["-p", "loss", "my_losses:SquaredTripletLoss", "-p", "loss_kwargs", '{"margin": 0.1}']
    tiny = ["-p", "model_kwargs", '{"channels": [4, 8, 8]}', "-p", "embedding_dim", "8", "-p", "K", "4",
            "-p", "epochs", "1", "-p", "iters_per_epoch", "2", "-p", "eval_batch_size", "256",
            "-p", "tsne_points", "50",
            "-p", "run_dir", str(tmp_path / "run")]
    papermill_cli = Path(sys.executable).parent / "papermill"
    done = subprocess.run([str(papermill_cli), str(notebook("experiment.ipynb")), "out.ipynb", *readme, *tiny],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["config"]["loss"] == "my_losses:SquaredTripletLoss"
    assert record["config"]["loss_kwargs"] == {"margin": 0.1}
    assert record["config"]["model_kwargs"] == {"channels": [4, 8, 8]}
