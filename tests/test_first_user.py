"""What a first user hits (issue 15): concurrent makes, damaged results, --status, the README's commands."""

from __future__ import annotations

import json
import subprocess

import yaml

from dmlbench.paths import REPO_ROOT
from dmlbench.training.record import REQUIRED_KEYS, UnreadableRecord, read_record, record_problem
from dmlbench.study.cells import emit_makefile, load_study

from .support import tiny_settings


def write_study(folder, name, losses):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "datasets": ["fashion-mnist"], "losses": losses,
                                    "miners": ["random"], "seeds": [0], "settings": tiny_settings()}))
    return path


def cells_makefile(study, results) -> str:
    """The generated makefile's path that 'make all STUDY=... RESULTS=...' would run."""
    out = subprocess.run(["make", "-s", "--no-print-directory", "cells-makefile", f"STUDY={study}", f"RESULTS={results}"],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_two_makes_of_different_studies_never_read_each_others_cells(isolated, tmp_path):
    # make all STUDY=A RESULTS=ra regenerates its cells makefile; a second make of study B (or of A into
    # another results folder) while A's cells run must leave A's makefile naming A's cells and folder.
    study_a = write_study(tmp_path, "alpha", ["triplet"])
    study_b = write_study(tmp_path, "beta", ["contrastive"])
    ra, rb = tmp_path / "ra", tmp_path / "rb"
    mk_a = cells_makefile(study_a, ra)
    text_a = (REPO_ROOT / mk_a).read_text()
    mk_b = cells_makefile(study_b, rb)
    mk_a_elsewhere = cells_makefile(study_a, rb)
    assert len({mk_a, mk_b, mk_a_elsewhere}) == 3
    assert cells_makefile(study_a, ra) == mk_a and (REPO_ROOT / mk_a).read_text() == text_a
    assert f"export DMLBENCH_RESULTS := {ra}" in text_a and str(study_a) in text_a
    assert "__triplet__" in text_a and "__contrastive__" not in text_a and str(rb) not in text_a
    # what A's make would run: A's cells only, into ra
    dry = subprocess.run(["make", "-n", "-f", mk_a, "cells"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and "__triplet__" in dry.stdout and str(study_b) not in dry.stdout


def finish_fake_run(cell, **changes):
    """A finished run's record written as the notebook would, without training (for status tests)."""
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    record = {key: None for key in REQUIRED_KEYS} | {"run_id": cell.run_id, "config": cell.config.to_dict()} | changes
    cell.metrics_path.write_text(json.dumps(record))
    return cell.metrics_path


def test_a_damaged_metrics_json_is_not_a_finished_run(isolated, tmp_path):
    study = load_study(write_study(tmp_path, "tiny", ["triplet", "contrastive"]))
    good, bad = study.cells
    finish_fake_run(good)
    text = json.dumps({"run_id": bad.run_id, "config": {}})
    bad.run_dir.mkdir(parents=True)
    bad.metrics_path.write_text(text[: len(text) // 2])  # truncated by a full disk or a crash
    assert good.is_done() and not bad.is_done()
    assert "not valid JSON" in record_problem(bad.metrics_path)
    try:
        read_record(bad.metrics_path)
    except UnreadableRecord as error:
        assert str(bad.metrics_path) in str(error)
    else:
        raise AssertionError("a truncated record was read")
    # the generated makefile runs it again though the file exists; the good one stays done
    mk = tmp_path / "cells.mk"
    mk.write_text(emit_makefile(study))
    dry = subprocess.run(["make", "-n", "-f", str(mk), "cells"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and f"--cell {bad.run_id}" in dry.stdout and good.run_id not in dry.stdout
    # a record of another folder, or without the keys every run writes, is not finished either
    bad.metrics_path.write_text(json.dumps({key: 1 for key in REQUIRED_KEYS} | {"run_id": good.run_id}))
    assert "not its folder's" not in str(record_problem(bad.metrics_path))  # a folder named by hand
    assert f"not {bad.run_id!r} of its folder" in record_problem(bad.metrics_path, bad.run_id)
    assert not bad.is_done()
    bad.metrics_path.write_text(json.dumps({"run_id": bad.run_id}))
    assert "lacks" in record_problem(bad.metrics_path)


def test_a_damaged_record_is_kept_aside_and_its_cell_runs_again(isolated, tmp_path):
    from dmlbench.study.cells import run_config

    study = load_study(write_study(tmp_path, "tiny", ["triplet"]))
    cell = study.cells[0]
    cell.run_dir.mkdir(parents=True)
    cell.metrics_path.write_text('{"run_id": "')
    run_config(cell.config)
    assert cell.is_done() and read_record(cell.metrics_path)["run_id"] == cell.run_id
    assert (cell.run_dir / "metrics.unreadable-1.json").read_text() == '{"run_id": "'


def test_status_shows_resumable_failed_and_damaged_cells(isolated, tmp_path):
    import torch

    study_path = write_study(tmp_path, "tiny", ["triplet", "contrastive", "margin"])
    study = load_study(study_path)
    done, resumable, damaged = study.cells[:3]
    finish_fake_run(done)
    resumable.run_dir.mkdir(parents=True)
    torch.save({"epoch": 2}, resumable.run_dir / "resume.pt")
    (resumable.run_dir / "failure.json").write_text("{}")
    damaged.run_dir.mkdir(parents=True)
    damaged.metrics_path.write_text("{")
    out = subprocess.run([str(REPO_ROOT / ".venv/bin/dmlbench"), "study", str(study_path), "--status"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert lines[done.run_id].endswith("[done]")
    assert lines[resumable.run_id].endswith("[resumable after epoch 2]")
    assert "unreadable metrics.json (not valid JSON" in lines[damaged.run_id]
    assert "3 cells (1 done, 1 resumable, 1 unreadable metrics.json)" in out.stdout.splitlines()[0]


def test_ctrl_c_stops_with_one_clean_message_and_the_cell_resumable(isolated, tmp_path):
    import os
    import signal
    import time

    from dmlbench.config import RunConfig

    settings = tiny_settings(epochs=40, iters_per_epoch=20)
    study = write_study(tmp_path, "slow", ["triplet"])  # ad-hoc runs take a study's protocol: here the tiny one
    study.write_text(study.read_text().replace("epochs: 2", "epochs: 40").replace("iters_per_epoch: 3", "iters_per_epoch: 20"))
    config = RunConfig(**settings, loss="triplet", miner="random")
    run_dir = isolated / "results" / "adhoc" / config.run_id()
    command = [str(REPO_ROOT / ".venv/bin/dmlbench"), "run", "--study", str(study), "--loss", "triplet", "--miner", "random"]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # its own process group, as a terminal's foreground job
    deadline = time.time() + 120
    while not (run_dir / "resume.pt").is_file() and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert (run_dir / "resume.pt").is_file(), process.communicate()
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "/40 [" not in line]  # the epoch bar aside
    assert lines[-1].startswith("dmlbench: interrupted.") and len(lines) <= 2, err
    assert not (run_dir / "metrics.json").exists() and (run_dir / "resume.pt").is_file()


def readme_section(title: str) -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def test_the_readme_commands_for_adding_a_loss_run_as_written(isolated, tmp_path):
    import re

    section = readme_section("Adding a loss as a notebook parameter")
    module = re.search(r"<!-- example:my_losses.py -->\n```python\n(.*?)```", section, re.S).group(1)
    shell_blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert shell_blocks, "the section lost its commands"
    # A folder shaped like the repository root, where the section says to save my_losses.py.
    root = tmp_path / "checkout"
    root.mkdir()
    for name in (".venv", "notebooks"):
        (root / name).symlink_to(REPO_ROOT / name)
    (root / "my_losses.py").write_text(module)
    commands = [line.strip() for block in shell_blocks for line in block.splitlines() if line.strip()]
    trains = [line for line in commands if " compare " not in line]  # compare: tests/study/test_compare.py
    for line in commands:
        if " compare " in line and "--estimate" not in line:
            continue  # the whole comparison trains for minutes: tests/study/test_compare.py runs it on a tiny study
        if " run " in line:  # the default study's Fashion-MNIST protocol takes minutes: the same command at a tiny one
            line += f" --study {write_study(tmp_path, 'protocol', ['triplet'])}"
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", line], cwd=root, capture_output=True, text=True)
        assert out.returncode == 0, f"{line}\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr, out.stderr
        if line.startswith(".venv/bin/dmlbench"):  # papermill's own command line starts its kernels over TCP
            assert "without encryption" not in out.stderr and "WARNING" not in out.stderr, out.stderr
    runs = sorted(p.parent.name for p in (isolated / "results" / "adhoc").glob("*/metrics.json"))
    assert len(runs) == len(trains) and not (isolated / "results" / "runs").exists()
    assert all("__squaredtripletloss__" in run for run in runs)
    margins = {json.loads((isolated / "results" / "adhoc" / run / "metrics.json").read_text())["config"]["loss_kwargs"]
               .get("margin") for run in runs}
    assert margins == {0.1, None}
    # the study-file form of the same section loads, with the user's loss beside a registered one
    losses = yaml.safe_load(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))["losses"]
    study = tmp_path / "with_my_loss.yaml"
    study.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "losses": losses, "miners": ["semi-hard"],
                                     "settings": tiny_settings()}))
    out = subprocess.run([str(REPO_ROOT / ".venv/bin/dmlbench"), "study", str(study), "--status"], cwd=root,
                         capture_output=True, text=True)
    assert out.returncode == 0 and "__squaredtripletloss__semi-hard" in out.stdout, out.stderr


def test_dmlbench_list_names_the_samplers(capsys):
    from dmlbench.cli import main
    from dmlbench.samplers import SAMPLERS

    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "samplers:" in listing
    section = listing.split("samplers:")[1].split("datasets:")[0]
    assert {line.split()[0] for line in section.strip().splitlines()} == set(SAMPLERS.names())
    assert main(["list", "samplers"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "samplers:"
