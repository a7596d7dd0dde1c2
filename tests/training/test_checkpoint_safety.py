"""A run folder's checkpoint.pt is read as tensors, numbers and text only and checked before use: a
planted pickle runs no code, a truncated or altered file fails in one line naming it, through every
path that reloads a network (the embedding loader, the report, the search command), and the study's
status names a damaged checkpoint while a missing one (normal for shipped runs) is no damage."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from dmlbench.cli import main
from dmlbench.config import RunConfig
from dmlbench.datasets import load_dataset
from dmlbench.errors import ConfigError, DamagedFileError, MissingCheckpointError
from dmlbench.training.embed import embed_test_split, load_network
from dmlbench.training.loop import build_model
from dmlbench.training.record import write_record
from dmlbench.training.rundir import REQUIRED_KEYS, RunDir, read_checkpoint

from ..support import REPO, tiny_settings


class Planted:
    """Unpickling this writes the marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def finished_run(root: Path, *, record_checkpoint: bool = False, **settings) -> RunDir:
    """A finished run folder of the tiny settings: checkpoint.pt and a metrics.json with every key a
    finished record has (written by write_record, which records the checkpoint, when asked)."""
    config = RunConfig(**tiny_settings(**settings))
    folder = RunDir(root / config.run_id())
    folder.path.mkdir(parents=True)
    torch.manual_seed(0)
    model = build_model(config).eval()
    torch.save({"model": model.state_dict(), "criterion": {}, "epoch": 1, "config": config.to_dict()}, folder.checkpoint)
    record = {key: 0 for key in REQUIRED_KEYS} | {"run_id": config.run_id(), "config_hash": config.config_hash(),
                                                   "config": config.to_dict(), "test": {}, "history": []}
    if record_checkpoint:
        write_record(folder.path, record)
    else:  # a run recorded before checkpoints were: only a read test can check its file
        folder.metrics.write_text(json.dumps(record))
    return folder


def plant(folder: RunDir, marker: Path, zipped: bool) -> None:
    """A hostile checkpoint in the run's place: torch.save's archive, or a bare pickle."""
    state = {"model": Planted(marker), "config": {}}
    if zipped:
        torch.save(state, folder.checkpoint)
    else:
        folder.checkpoint.write_bytes(pickle.dumps(state))


def one_line(error: BaseException, path: Path) -> str:
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    return text


@pytest.mark.parametrize("zipped", [True, False], ids=["torch-archive", "bare-pickle"])
def test_a_planted_checkpoint_runs_no_code_on_any_reloading_path(isolated, tmp_path, tiny_fmnist, monkeypatch,
                                                                  capsys, zipped):
    from dmlbench.reporting import sections
    from dmlbench.study.search import build

    folder = finished_run(tmp_path / "runs")
    marker = tmp_path / "marker"
    plant(folder, marker, zipped)
    splits = load_dataset("fashion-mnist", root=str(tiny_fmnist))
    for call in (lambda: load_network(folder.path), lambda: embed_test_split(folder.path, splits),
                 lambda: build(folder.path, split="test", family="flat")):
        with pytest.raises(DamagedFileError) as error:
            call()
        one_line(error.value, folder.checkpoint)
        assert not marker.exists()
    # the report's reload says the network cannot be reloaded, naming the file, and goes on
    shown = []
    monkeypatch.setattr(sections, "_show", lambda markdown=None, html=None: shown.append(markdown))
    run = {"run_id": folder.run_id, "loss": "contrastive", "miner": "none", "seed": 0, "map@r": 0.0}
    ctx = SimpleNamespace(runs_of=lambda dataset: pd.DataFrame([run]), runs_dir=folder.path.parent)
    assert sections._up_close(ctx, "fashion-mnist", "best", run, splits) is None
    assert "cannot be reloaded" in shown[0] and f"`{folder.checkpoint}`" in shown[0] and not marker.exists()
    # the command line: exit 2, one line naming the file
    assert main(["search", "build", str(folder.path), "--split", "test", "--index", "flat"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dmlbench: error: ") and "\n" not in err and str(folder.checkpoint) in err
    assert not marker.exists()


def test_a_truncated_checkpoint_of_an_old_run_is_named_and_status_says_so(tmp_path):
    folder = finished_run(tmp_path / "runs")
    data = folder.checkpoint.read_bytes()
    assert folder.state() == "done" and folder.checkpoint_problem() is None
    for damaged in (data[: len(data) // 2], data[:-10], b"", data[:3000] + bytes(100) + data[3100:]):
        folder.checkpoint.write_bytes(damaged)
        with pytest.raises(DamagedFileError, match="truncated or damaged|CRC") as error:
            load_network(folder.path)
        one_line(error.value, folder.checkpoint)
        assert folder.checkpoint_problem(thorough=True) is not None
        if len(damaged) < len(data):  # the status's quick check sees a truncated file
            state = folder.state()
            assert state.startswith("done (but ") and str(folder.checkpoint) in state and "\n" not in state


def test_a_recorded_checkpoint_is_checked_by_its_size_and_digest(tmp_path):
    folder = finished_run(tmp_path / "runs", record_checkpoint=True)
    recorded = json.loads(folder.metrics.read_text())["checkpoint"]
    data = folder.checkpoint.read_bytes()
    assert recorded["bytes"] == len(data) and len(recorded["sha256"]) == 64
    load_network(folder.path)  # whole: loads
    folder.checkpoint.write_bytes(data[:-1])
    with pytest.raises(DamagedFileError, match=f"{len(data) - 1} bytes where the run wrote {len(data)}"):
        folder.read_checkpoint()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    folder.checkpoint.write_bytes(bytes(flipped))
    with pytest.raises(DamagedFileError, match="SHA-256 differs"):
        load_network(folder.path)
    assert "SHA-256 differs" in folder.checkpoint_problem(thorough=True) and folder.state() == "done"


def test_a_missing_checkpoint_is_no_damage_but_a_reload_names_it(tmp_path, capsys):
    folder = finished_run(tmp_path / "runs")
    folder.checkpoint.unlink()
    assert folder.state() == "done" and folder.checkpoint_problem() is None
    with pytest.raises(MissingCheckpointError) as error:
        load_network(folder.path)
    assert isinstance(error.value, (ConfigError, FileNotFoundError))
    one_line(error.value, folder.checkpoint)


def test_the_shipped_checkpoints_load_as_plain_values():
    tracked = subprocess.run(["git", "ls-files", "results/**/checkpoint.pt"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.split()
    assert tracked, "the repository ships some checkpoints"
    for name in tracked:
        folder = RunDir((REPO / name).parent)
        assert folder.checkpoint_problem() is None and folder.checkpoint_problem(thorough=True) is None
        state = read_checkpoint(folder.checkpoint)
        assert isinstance(state["config"], dict) and all(isinstance(v, torch.Tensor) for v in state["model"].values())


def test_the_index_evaluation_names_a_damaged_checkpoint_and_measures_the_other_runs(isolated):
    from dmlbench.evaluation.indexes import IndexSpec
    from dmlbench.paths import runs_dir
    from dmlbench.study.cells import Cell
    from dmlbench.study.indexes import IndexPlan, run_indexes

    bad, good = (finished_run(runs_dir(), seed=seed) for seed in (0, 1))  # the damaged one first
    bad.checkpoint.write_bytes(bad.checkpoint.read_bytes()[:-100])
    plan = IndexPlan(specs=(IndexSpec.make("flat"),), queries=20, exact_queries=5)
    cells = [Cell(RunConfig(**tiny_settings(seed=seed))) for seed in (0, 1)]
    study = SimpleNamespace(indexes=plan, cells=cells, path=isolated / "study.yaml")
    lines = []
    with pytest.raises(DamagedFileError) as error:
        run_indexes(study, log=lines.append)
    one_line(error.value, bad.checkpoint)
    assert plan.result_path(good.run_id).is_file() and not plan.result_path(bad.run_id).exists()
    assert any(str(bad.checkpoint) in line and "not evaluated" in line for line in lines)
