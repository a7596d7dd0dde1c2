"""Study files: validation before anything runs, cells, skipping, and the generated makefile."""

import pytest
import yaml

from dmlbench.config import RunConfig
from dmlbench.errors import ConfigError, UnknownNameError
from dmlbench.paths import REPO_ROOT
from dmlbench.study.cells import emit_makefile, load_study


def write_study(tmp_path, **content):
    study = {"name": "t", "datasets": ["fashion-mnist"], "losses": {"triplet": {"margin": 0.2}},
             "miners": ["none", "semi-hard"], "seeds": [0, 1], "settings": {"epochs": 1}}
    study.update(content)
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def test_default_study_is_valid_and_big_enough():
    study = load_study(REPO_ROOT / "studies" / "default.yaml")
    miners_of = {}
    for cell in study.cells:
        miners_of.setdefault(cell.config.loss, set()).add(cell.config.miner)
    assert sum(len(m) >= 3 for m in miners_of.values()) >= 2  # at least 2 losses x 3 miners
    assert len({c.run_id for c in study.cells}) == len(study.cells)


def test_cells_cross_every_axis(tmp_path, isolated):
    study = load_study(write_study(tmp_path))
    assert [(c.config.miner, c.config.seed) for c in study.cells] == [
        ("none", 0), ("none", 1), ("semi-hard", 0), ("semi-hard", 1)]
    assert all(c.config.epochs == 1 and c.config.loss_kwargs == {"margin": 0.2} for c in study.cells)
    assert all(c.run_dir.parent == isolated / "results" / "runs" for c in study.cells)


@pytest.mark.parametrize("content,message", [
    ({"losses": ["triplet", "lifted"]}, "losses: unknown loss 'lifted'"),
    ({"miners": ["hardest"]}, "miners: unknown miner 'hardest'"),
    ({"datasets": ["imagenet"]}, "datasets: unknown dataset 'imagenet'; valid dataset names: cars196, cub, fashion-mnist"),
    ({"settings": {"epoch": 3}}, "settings: unknown setting 'epoch'; valid settings:"),
    ({"settings": {"loss": "triplet"}}, "unknown setting 'loss'"),
    ({"seeds": ["a"]}, "seeds: expected a list of non-negative integers"),
    ({"sampler": "pk"}, "unknown key 'sampler'; valid keys: name, description, datasets"),
    ({"losses": {"triplet": {"margn": 0.1}}}, "takes no argument 'margn'"),
    ({"miners": []}, "'miners' is missing or empty"),
])
def test_bad_study_files_fail_before_anything_runs(tmp_path, content, message):
    with pytest.raises(ConfigError) as info:
        load_study(write_study(tmp_path, **content))
    assert message in str(info.value) and "study.yaml" in str(info.value)


def test_unknown_name_error_type(tmp_path):
    with pytest.raises(UnknownNameError):
        load_study(write_study(tmp_path, miners=["nope"]))


def test_emitted_makefile_has_one_target_per_cell_and_the_report(tmp_path, isolated):
    study = load_study(write_study(tmp_path))
    text = emit_makefile(study, python="/usr/bin/python3")
    for cell in study.cells:
        assert f"{cell.metrics_path}:\n\t/usr/bin/python3 -m dmlbench run --study {study.path} --cell {cell.run_id}" in text
    assert "report.html: $(RUNS)" in text
    assert ".DELETE_ON_ERROR" not in text.replace("No .DELETE_ON_ERROR", "")


def test_cells_list_adds_pairs_beyond_the_grid_once(tmp_path, isolated):
    study = load_study(write_study(tmp_path, seeds=[0], cells=[
        {"loss": "contrastive", "miner": "multi-similarity", "miner_kwargs": {"epsilon": 0.2}},
        {"loss": "triplet", "miner": "none", "loss_kwargs": {"margin": 0.2}},  # already in the grid
        {"loss": "triplet", "miner": "multi-similarity"},  # incompatible: skipped with the reason
    ]))
    pairs = [(c.config.loss, c.config.miner) for c in study.cells]
    assert pairs == [("triplet", "none"), ("triplet", "semi-hard"), ("contrastive", "multi-similarity")]
    assert study.cells[-1].config.miner_kwargs == {"epsilon": 0.2}
    assert [(s.loss, s.miner) for s in study.skipped] == [("triplet", "multi-similarity")]


def test_cells_alone_make_a_study_and_bad_cells_fail(tmp_path):
    path = tmp_path / "cells.yaml"
    path.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "cells": [{"loss": "triplet", "miner": "none"}]}))
    assert len(load_study(path).cells) == 1
    path.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "cells": [{"loss": "triplet", "mine": "none"}]}))
    with pytest.raises(ConfigError, match=r"cells\[0\]: expected a mapping with 'loss' and 'miner'"):
        load_study(path)
    path.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "cells": [
        {"loss": "triplet", "miner": "none", "seed": 3}]}))
    with pytest.raises(ConfigError, match=r"cells\[0\]: unknown key 'seed'; valid keys: loss, miner"):
        load_study(path)
    path.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "cells": [{"loss": "nope", "miner": "none"}]}))
    with pytest.raises(ConfigError, match="losses: unknown loss 'nope'"):
        load_study(path)


def test_a_changed_component_version_makes_its_cells_new_runs_and_leaves_the_others(monkeypatch):
    """Bumping one miner's and one loss's version turns exactly their cells of the shipped study into
    new, unfinished runs; every other cell keeps its id and stays done."""
    from dmlbench.losses import LOSSES
    from dmlbench.miners import MINERS
    from dmlbench.paths import REPO_ROOT

    monkeypatch.delenv("DMLBENCH_RESULTS", raising=False)  # the repository's own results/
    study = load_study(REPO_ROOT / "studies" / "default.yaml", check_networks=False)
    before = {cell.run_id: (cell.state(), cell.config.hashed_dict()) for cell in study.cells}
    assert {state for state, _ in before.values()} == {"done"}
    miner, loss = MINERS.get("smooth-hard"), LOSSES.get("center")
    monkeypatch.setattr(miner, "version", miner.version + 1)
    monkeypatch.setattr(loss, "version", loss.version + 1)
    changed = [c for c in study.cells if c.config.miner == "smooth-hard" or c.config.loss == "center"]
    # han-typefaces: contrastive and triplet with smooth-hard, center alone, on every (fold, seed) unit
    units = {(c.config.fold, c.config.seed) for c in study.cells}
    assert len(units) == 6 and len(changed) == 3 * len(units)
    for cell in study.cells:
        if cell in changed:
            assert cell.run_id not in before and cell.state() == "to run"
            versions = cell.config.hashed_dict()["component_versions"]
            # a bumped version not yet recorded by `make lock` carries its source digest: "<version>+<digest>"
            assert (str(versions.get("miner")).startswith(f"{miner.version}+")
                    or str(versions.get("loss")).startswith(f"{loss.version}+"))
        else:
            assert cell.run_id in before and cell.state() == "done"
            assert cell.config.hashed_dict() == before[cell.run_id][1]


# -- datasets as a mapping: per-dataset seeds, settings and grid ------------------------------------

def test_datasets_mapping_is_parsed_and_names_or_lists_stay_as_they_were(tmp_path):
    from dmlbench.study.cells import _datasets

    path = tmp_path / "study.yaml"
    assert _datasets(path, "fashion-mnist") == {"fashion-mnist": {}}
    assert _datasets(path, ["fashion-mnist", "cub"]) == {"fashion-mnist": {}, "cub": {}}
    given = {"fashion-mnist": None, "cub": {"seeds": [3], "grid": False, "settings": {"epochs": 2}}}
    assert _datasets(path, given) == {"fashion-mnist": {}, "cub": given["cub"]}


VALID_KEYS = "valid keys: seeds, folds, settings, grid"
NOT_A_MAPPING_OR_BOOL = "settings must be a mapping and grid true or false"


@pytest.mark.parametrize("datasets,message", [
    ({"fashion-mnist": {"seed": [1]}}, f"datasets: fashion-mnist: unknown key 'seed'; {VALID_KEYS}"),
    ({"fashion-mnist": ["seeds"]}, "datasets: fashion-mnist: expected a mapping with keys seeds, folds, settings, grid"),
    ({"fashion-mnist": {"settings": [1]}}, f"datasets: fashion-mnist: {NOT_A_MAPPING_OR_BOOL}"),
    ({"fashion-mnist": {"grid": "no"}}, f"datasets: fashion-mnist: {NOT_A_MAPPING_OR_BOOL}"),
    ({"fashion-mnist": {"seeds": [-1]}}, "seeds: expected a list of non-negative integers"),
    ({"fashion-mnist": {"settings": {"epoch": 2}}}, "settings: unknown setting 'epoch'; valid settings:"),
    ({"fashion-mnist": {"settings": {"loss": "triplet"}}}, "unknown setting 'loss'"),
    ({"imagenet": {}}, "datasets: unknown dataset 'imagenet'; valid dataset names:"),
    ([{"fashion-mnist": {}}], "datasets: expected a name, a list of names or a mapping name -> {seeds, folds, settings, grid}"),
])
def test_bad_per_dataset_entries_fail_naming_the_valid_keys(tmp_path, datasets, message):
    with pytest.raises(ConfigError) as info:
        load_study(write_study(tmp_path, datasets=datasets), check_networks=False)
    assert message in str(info.value) and "study.yaml" in str(info.value)


def test_a_dataset_of_its_own_seeds_settings_and_no_grid(tmp_path, isolated):
    path = write_study(tmp_path, datasets={"fashion-mnist": {}, "cub": {
        "seeds": [3], "grid": False, "settings": {"epochs": 2, "lr": 5e-4}}},
        cells=[{"loss": "contrastive", "miner": "none"}], settings={"epochs": 1, "K": 4})
    cells = {(c.config.dataset, c.config.loss, c.config.miner, c.config.seed): c.config
             for c in load_study(path, check_networks=False).cells}
    grid = [("triplet", "none"), ("triplet", "semi-hard"), ("contrastive", "none")]
    assert sorted(cells) == sorted([("fashion-mnist", *pair, seed) for pair in grid for seed in (0, 1)]
                                   + [("cub", "contrastive", "none", 3)])
    cub = cells[("cub", "contrastive", "none", 3)]
    assert (cub.epochs, cub.lr, cub.K) == (2, 5e-4, 4)  # its own settings over the shared ones
    assert all((c.epochs, c.lr, c.K) == (1, RunConfig.lr, 4) for key, c in cells.items() if key[0] == "fashion-mnist")


def test_one_dataset_mapping_with_cells_only(tmp_path, isolated):
    cells = [{"loss": "contrastive", "miner": "none"}, {"loss": "margin", "miner": "distance-weighted"}]
    path = write_study(tmp_path, datasets={"fashion-mnist": {"seeds": [3], "grid": False, "settings": {"P": 4}}},
                       cells=cells)
    study = load_study(path, check_networks=False)
    assert [(c.config.loss, c.config.miner, c.config.seed) for c in study.cells] == [
        ("contrastive", "none", 3), ("margin", "distance-weighted", 3)]
    assert all(c.config.P == 4 and c.config.epochs == 1 for c in study.cells)
    as_list = tmp_path / "as-list.yaml"  # the same cells from a list of names and shared seeds and settings
    as_list.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "seeds": [3], "settings": {"epochs": 1, "P": 4},
                                       "cells": cells}))
    assert [c.run_id for c in load_study(as_list, check_networks=False).cells] == [c.run_id for c in study.cells]
