"""Numbers in study files, overrides and spaces are read as numbers however YAML spells them, and text
where a number belongs fails in one line naming the setting, the file and the expected type.

PyYAML reads YAML 1.1, where ``1e-3`` (no dot) and ``1.0e3`` (no exponent sign) are text: a study with
``lr: 1e-3`` reached the run's hash as the string '1e-3' and died in a 28-line TypeError.
"""

from __future__ import annotations

import textwrap

import pytest

from dmlbench.cli import _parse_set, main
from dmlbench.errors import ConfigError
from dmlbench.study.cells import adhoc_config, load_study
from dmlbench.study.compare import comparison_study

SPELLINGS = ["1e-3", "1E-3", ".001", "1.0e-3", "+1e-3", "1.0E-03", "0.1e-2", "1_0e-4"]


def study_file(tmp_path, settings: str, extra: str = "", name: str = "numbers"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        datasets: [fashion-mnist]
        losses: {{triplet: {{margin: 0.2}}}}
        miners: [semi-hard]
        settings: {settings}
        """) + extra)
    return path


@pytest.mark.parametrize("text,value", [*((s, 0.001) for s in SPELLINGS), ("1_000", 1000), ("-.5", -0.5),
                                        ("1e3", 1000.0), ("10", 10), ("fast", "fast")])
def test_the_loader_reads_every_spelling_of_a_number(text, value):
    from dmlbench.config import load_yaml

    read = load_yaml(f"v: {text}")["v"]
    assert read == value and type(read) is type(value)


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_study_file_learning_rate_in_any_spelling_is_the_number(isolated, spelling):
    study = load_study(study_file(isolated, f"{{lr: {spelling}, epochs: 1}}"), check_networks=False)
    assert study.cells[0].config.lr == 0.001
    written = load_study(study_file(isolated, "{lr: 0.001, epochs: 1}", name="plain"), check_networks=False)
    assert study.cells[0].run_id == written.cells[0].run_id  # the same run, however it is spelt


def test_underscored_whole_numbers_read_as_python_reads_them(isolated):
    study = load_study(study_file(isolated, "{iters_per_epoch: 1_000, epochs: 1}"), check_networks=False)
    assert study.cells[0].config.iters_per_epoch == 1000


@pytest.mark.parametrize("settings,message", [
    ("{lr: fast}", r"numbers\.yaml: settings: lr: expected a number \(e\.g\. 0\.001 or 1e-3\), got the text 'fast'"),
    ("{epochs: 1e1}", r"numbers\.yaml: cell .*: epochs must be a positive integer, got 10\.0"),
    ("{lr: [1]}", r"numbers\.yaml: cell .*: lr must be a positive number, got \[1\]"),
    ("{lr: null}", r"numbers\.yaml: cell .*: lr must be a positive number, got None"),
    ("{loss_lr: quick}", r"settings: loss_lr: expected a number \(e\.g\. 0\.001 or 1e-3\) or null \(unset\), "
                         r"got the text 'quick'"),
    ("{torch_compile: 'yes'}", r"settings: torch_compile: expected true or false or null \(unset\), got the text 'yes'"),
    ("{model_kwargs: '3'}", r"settings: model_kwargs: expected a mapping of names to values, got the text '3'"),
])
def test_text_where_a_number_belongs_is_one_line_naming_file_setting_and_type(isolated, settings, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_study(study_file(isolated, settings), check_networks=False)
    assert "\n" not in str(caught.value)


def test_a_dataset_s_own_settings_are_named_where_they_stand(isolated):
    path = study_file(isolated, "{epochs: 1}")
    path.write_text(path.read_text().replace("datasets: [fashion-mnist]",
                                             "datasets: {fashion-mnist: {settings: {K: four}}}"))
    with pytest.raises(ConfigError, match=r"numbers\.yaml: datasets: fashion-mnist: settings: K: expected a whole "
                                          r"number \(digits only, e\.g\. 300\), got the text 'four'"):
        load_study(path, check_networks=False)


def test_a_loss_argument_given_text_names_the_argument_and_its_default(isolated):
    path = study_file(isolated, "{epochs: 1}")
    path.write_text(path.read_text().replace("margin: 0.2", "margin: fast"))
    with pytest.raises(ConfigError, match=r"loss_kwargs: loss 'triplet' rejects its arguments \{'margin': 'fast'\}: "
                                          r"margin expects a number, got the text 'fast'; its arguments and their defaults: "
                                          r"margin=0\.2, variant='hinge'"):
        load_study(path, check_networks=False)


def test_the_command_line_prints_one_line_and_exits_2(isolated, capsys):
    assert main(["study", "--study", str(study_file(isolated, "{lr: fast}")), "--status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmlbench: error: ") and "lr: expected a number" in err and "\n" not in err
    assert not (isolated / "results").exists()


def test_set_overrides_read_numbers_as_yaml_1_2(isolated):
    assert _parse_set(["lr=1e-3", "epochs=3", "loss_lr=2E-4"]) == {"lr": 0.001, "epochs": 3, "loss_lr": 0.0002}
    base = study_file(isolated, "{epochs: 1}")
    config, _ = adhoc_config(base, _parse_set(["lr=1e-3", "loss=triplet", "miner=semi-hard"]))
    assert config.lr == 0.001
    with pytest.raises(ConfigError, match=r"^lr must be a positive number, got 'fast'$"):  # as for lr=0
        adhoc_config(base, _parse_set(["lr=fast", "loss=triplet", "miner=semi-hard"]))


def test_a_tuning_space_reads_exponent_bounds(isolated):
    tuning = textwrap.dedent("""\
        tuning:
          trials: 2
          space:
            settings: {lr: {low: 1e-4, high: 1E-2, log: true}}
        """)
    study = load_study(study_file(isolated, "{epochs: 1}", tuning), check_networks=False)
    (param,) = study.tuning.settings
    assert (param.low, param.high) == (0.0001, 0.01)


def test_a_comparison_base_reads_exponent_numbers(isolated):
    base = study_file(isolated, "{lr: 5e-4, epochs: 1}")
    assert comparison_study("contrastive", base=base)["settings"]["lr"] == 0.0005


def test_notebook_parameters_given_as_text_read_every_spelling(isolated):
    from dmlbench.config import settings_from_text

    read = settings_from_text({"iters_per_epoch": "1_000", "lr": "1E-3", "loss_lr": "+.5e-2", "epochs": "3"})
    assert read == {"iters_per_epoch": 1000, "lr": 0.001, "loss_lr": 0.005, "epochs": 3}
