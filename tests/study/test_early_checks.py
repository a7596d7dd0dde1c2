"""What a study can know before it trains is checked before it trains: tuning ranges whose ends no
trial could train with, an indexes block that does not fit the embeddings or the test split, and a
data_root that holds no data each fail in one line when the study is read, with nothing written.

Each of these used to surface late: a range mid-search, a bad index after every cell had trained (or,
for nlist above the items, as a recorded recall of a clamped index), an empty data_root as a failed
kernel with its failure files.
"""

from __future__ import annotations

import copy
import shutil

import numpy as np
import pytest
import yaml

from dmlbench.cli import main
from dmlbench.config import RunConfig
from dmlbench.errors import ConfigError
from dmlbench.evaluation.indexes import IndexSpec, build_index
from dmlbench.evaluation.indexes.sweep import Queries, evaluate_indexes, normalized
from dmlbench.study.cells import load_study
from dmlbench.study.indexes import IndexPlan, run_indexes
from dmlbench.study.preflight import check_run, check_study_indexes

from ..support import tiny_settings, write_miniature


def write_study(folder, name="early", **extra):
    """A one-cell study of the tiny Fashion-MNIST (5 training classes, 100 test items, 8-dimensional
    embeddings) with ``extra`` keys (tuning, indexes) or settings."""
    settings = tiny_settings() | extra.pop("settings", {})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "datasets": ["fashion-mnist"], "losses": {"triplet": {"margin": 0.2}},
                                    "miners": ["semi-hard"], "settings": settings, **extra}))
    return path


def refused_in_one_line(path, message, folder, capsys):
    """The study's checks refuse ``path`` with ``message``; 'dmlbench study --status' prints that one line
    and exits 2; no results folder is made."""
    with pytest.raises(ConfigError, match=message):
        check_study_indexes(load_study(path))
    assert main(["study", "--study", str(path), "--status"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dmlbench: error: {path}: ") and "\n" not in err, err
    assert not (folder / "results").exists()


# -- tuning ranges: each end (and each choice) is made into a run and checked as a run is -----------

BAD_RANGES = [
    ({"settings": {"P": {"low": 2, "high": 12, "int": True}}},
     r"tuning: space: settings: P: the high end 12 makes a run no trial could train \(fashion-mnist x triplet x "
     r"semi-hard\): P=12: the pk sampler draws P distinct classes .* valid range: 1 <= P <= 5"),
    ({"settings": {"lr": ["fast", 1e-3]}},
     r"tuning: space: settings: lr: the choice 'fast' makes a run .*lr must be a positive number, got 'fast'"),
    ({"losses": {"triplet": {"margin": {"low": -0.5, "high": 0.5}}}},
     r"tuning: space: losses: triplet: margin: the low end -0.5 makes a run .*margin must be a distance >= 0"),
    ({"losses": {"triplet": {"margin": [0.1, "wide"]}}},
     r"losses: triplet: margin: the choice 'wide' .*margin expects a number, got the text 'wide'"),
    ({"settings": {"P": {"low": 2, "high": 5}}},
     r"settings: P: the low end 2.0 .*\(give the range int: true\): P must be a positive integer, got 2.0"),
    ({"settings": {"K": {"low": 1, "high": 4, "int": True}}},
     r"settings: K: the low end 1 .*needs two or more images per class in a batch"),
    ({"settings": {"embedding_dim": {"low": 0, "high": 16, "int": True}}},
     r"settings: embedding_dim: the low end 0 .*embedding_dim must be a positive integer, got 0"),
    ({"settings": {"weight_decay": {"low": -1e-4, "high": 1e-3}}},
     r"settings: weight_decay: the low end -0.0001 .*weight_decay must be a non-negative number"),
    ({"miners": {"semi-hard": {"margin": {"low": -1.0, "high": 0.5}}}},
     r"tuning: space: miners: semi-hard: margin: the low end -1.0 makes a run no trial could train"),
]


@pytest.mark.parametrize("space,message", BAD_RANGES, ids=[str(i) for i in range(len(BAD_RANGES))])
def test_a_range_no_trial_could_train_fails_before_the_first_trial(isolated, capsys, space, message):
    path = write_study(isolated, tuning={"trials": 2, "space": space})
    refused_in_one_line(path, message, isolated, capsys)


def test_the_tuner_refuses_such_a_range_before_its_storage_or_a_trial(isolated, capsys):
    path = write_study(isolated, tuning={"trials": 2, "space": {"settings": {"lr": ["fast", 1e-3]}}})
    assert main(["tune", "--study", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"dmlbench: error: {path}: tuning: space: settings: lr: the choice 'fast'") and "\n" not in err
    assert not (isolated / "results").exists()  # no search folder, no trials.db


def test_ranges_every_end_of_which_trains_are_accepted(isolated):
    space = {"settings": {"P": {"low": 2, "high": 5, "int": True}, "lr": {"low": 1e-4, "high": 1e-2, "log": True}},
             "losses": {"triplet": {"margin": [0.1, 0.3]}}}
    study = load_study(write_study(isolated, tuning={"trials": 2, "space": space}))
    assert len(study.searches) == 1 and not (isolated / "results").exists()


# -- the indexes block: against the embedding size and the test split's items ----------------------

BAD_BLOCKS = [
    ([{"family": "pq", "m": 3}],
     r"indexes: families\[0\]: index pq: m=3 bytes per code must divide the embedding dimension 8; valid m: 1, 2, 4, 8 "
     r"\(the fashion-mnist runs' 8-dimensional embeddings, 100 items"),
    ([{"family": "flat"}, {"family": "ivf-flat", "nlist": 100000}],
     r"indexes: families\[1\]: index ivf-flat: nlist=100000 inverted lists over 100 items .* valid nlist: 1 to 100"),
    ([{"family": "ivf-pq", "m": 4, "nbits": 8}],
     r"index ivf-pq: nbits=8 needs at least 256 vectors to train its codebooks, got 100; valid nbits: 1 to 6"),
    ([{"family": "pq", "m": 4, "nbits": 20}], r"index pq: nbits=20 is out of range; valid nbits: 1 to 16"),
    ([{"family": "hnsw", "M": 1}], r"index hnsw: M=1 is out of range; valid M: 2 to any"),
    ([{"family": "ivf-flat", "nlist": 8, "sweep": [1, 16]}],
     r"index ivf-flat: nprobe=16 of its sweep probes more lists than its nlist=8 .*valid nprobe: 1 to 8"),
]


@pytest.mark.parametrize("families,message", BAD_BLOCKS, ids=[str(i) for i in range(len(BAD_BLOCKS))])
def test_an_indexes_block_that_does_not_fit_fails_before_any_cell_trains(isolated, capsys, families, message):
    path = write_study(isolated, indexes={"queries": 50, "exact_queries": 10, "families": families})
    refused_in_one_line(path, message, isolated, capsys)


def test_an_ivf_index_with_more_lists_than_items_is_refused_not_clamped():
    """build_index once clamped nlist to the items: the rows it measured were another index's recall."""
    rng = np.random.default_rng(0)
    items, labels = normalized(rng.normal(size=(100, 8))), np.repeat(np.arange(10), 10)
    queries = Queries(items[:20], labels[:20], exclude=np.arange(20))
    with pytest.raises(ConfigError, match=r"nlist=500 inverted lists over 100 items .* valid nlist: 1 to 100"):
        evaluate_indexes(items, labels, queries, [IndexSpec.make("ivf-flat", nlist=500)], repeats=1)
    with pytest.raises(ConfigError, match="nlist=101"):
        build_index(IndexSpec.make("ivf-pq", nlist=101, m=2, nbits=4), items)
    assert build_index(IndexSpec.make("ivf-flat", nlist=100), items).n == 100  # as many lists as items: allowed


def test_run_indexes_writes_no_result_of_an_nlist_above_the_items(at_study):
    path, study, root = at_study
    bad = copy.copy(study)
    bad.indexes = IndexPlan(specs=(IndexSpec.make("ivf-flat", nlist=100000),), queries=50, exact_queries=10)
    with pytest.raises(ConfigError, match=r"nlist=100000 inverted lists over 100 items"):
        run_indexes(bad, log=lambda line: None)
    assert not list(bad.indexes.folder().glob("*.json"))  # no recall of a clamped index recorded


# -- a data_root without the data: refused before any kernel starts --------------------------------

def test_an_empty_data_root_names_the_folder_and_the_files_expected(isolated, capsys):
    empty = isolated / "empty-data"
    empty.mkdir()
    path = write_study(isolated, settings={"data_root": str(empty)})
    refused_in_one_line(path, rf"cell fashion-mnist x triplet x semi-hard x seed 0: data_root '{empty}': no "
                              rf"Fashion-MNIST files in {empty} or {empty}/fashion-mnist; expected the four files "
                              r"train-images-idx3-ubyte\(\.gz\), train-labels-idx1-ubyte\(\.gz\)", isolated, capsys)
    with pytest.raises(ConfigError, match="no Fashion-MNIST files in"):  # 'dmlbench run': before its folder exists
        check_run(RunConfig(**tiny_settings(), data_root=str(empty)).validate())


def test_an_empty_data_root_of_a_photo_benchmark_names_its_index_file(isolated):
    empty = isolated / "empty-cub"
    empty.mkdir()
    with pytest.raises(ConfigError, match=rf"data_root '{empty}': cub: no folder holding images.txt was found; "
                                          rf"looked in: {empty}"):
        check_run(RunConfig(**tiny_settings(), dataset="cub", data_root=str(empty)))


def test_a_photo_benchmark_whose_images_are_not_there_is_refused_before_the_run(isolated):
    root = write_miniature("cub", isolated / "data")
    config = RunConfig(**tiny_settings(K=2), dataset="cub", data_root=str(root))
    check_run(config)  # all there
    shutil.rmtree(root / "images")
    with pytest.raises(ConfigError, match=rf"data_root '{root}': cub \(official layout in {root}\): 400 of 400 listed "
                                          r"images are missing, e\.g\. "):
        check_run(config)


def test_a_data_root_for_the_rendered_dataset_is_refused_before_rendering(isolated):
    with pytest.raises(ConfigError, match="han-typefaces is rendered from installed font packages"):
        check_run(RunConfig(**tiny_settings(), dataset="han-typefaces", data_root=str(isolated)))
