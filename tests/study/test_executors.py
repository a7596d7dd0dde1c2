"""Study executors: submitit's local executor runs real studies end to end; the Slurm executor's
submission script, as submitit writes it, carries the study file's slurm settings."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from dmlbench.errors import ConfigError
from dmlbench.study.executors import SLURM_SETTINGS, CellJob, job_folder, submitit_executor
from dmlbench.paths import REPO_ROOT
from dmlbench.study.cells import load_study
from dmlbench.study.executors import run_study

from ..support import tiny_settings
from ..support import BROKEN_LOSS, user_module


def write_study(path, **content):
    study = {"name": "pair", "datasets": ["fashion-mnist"], "losses": ["triplet"], "miners": ["none", "semi-hard"],
             "seeds": [0], "settings": tiny_settings(epochs=1)}
    study.update(content)
    path.write_text(yaml.safe_dump({key: value for key, value in study.items() if value is not None}))
    return path


def dmlbench_study(*args):
    return subprocess.run([sys.executable, "-m", "dmlbench", "study", *map(str, args)], capture_output=True,
                          text=True, timeout=600, cwd=REPO_ROOT)


def job_logs(folder):
    return sorted(folder.rglob("*_log.out"))


@pytest.fixture
def one_thread(monkeypatch):
    """Two cells at once on a small machine: one thread each, as `make all` gives them."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_submitit_local_runs_a_study_end_to_end_and_a_rerun_runs_nothing(isolated, tmp_path, one_thread):
    jobs = tmp_path / "jobs"
    study_path = write_study(tmp_path / "pair.yaml", slurm={"log_folder": str(jobs)})
    run = dmlbench_study(study_path, "--executor", "submitit-local", "--jobs", "2")
    assert run.returncode == 0, run.stderr
    study = load_study(study_path)
    assert len(study.cells) == 2 and all(cell.is_done() for cell in study.cells)
    for cell in study.cells:
        assert (cell.run_dir / "experiment.ipynb").is_file() and json.loads(cell.metrics_path.read_text())["test"]
    runners = {json.loads((c.run_dir / "execution.json").read_text())["runner"]["pid"] for c in study.cells}
    assert len(runners) == 2  # each cell in a job process of its own
    assert (isolated / "results" / "report.html").is_file()
    logs = job_logs(jobs)
    assert len(logs) == 2 and all("Job completed successfully" in log.read_text() for log in logs)

    finished = {cell.run_id: cell.metrics_path.stat().st_mtime_ns for cell in study.cells}
    again = dmlbench_study(study_path, "--executor", "submitit-local", "--no-report")
    assert again.returncode == 0, again.stderr
    assert job_logs(jobs) == logs  # no job submitted
    assert {cell.run_id: cell.metrics_path.stat().st_mtime_ns for cell in study.cells} == finished


def test_submitit_local_failing_cell_leaves_the_other_to_finish(isolated, tmp_path, monkeypatch, one_thread):
    user_module(tmp_path, monkeypatch, "broken_loss.py", BROKEN_LOSS)
    jobs = tmp_path / "jobs"
    cells = [{"loss": "broken_loss:Broken", "miner": "semi-hard"}, {"loss": "contrastive", "miner": "none"}]
    study_path = write_study(tmp_path / "faulty.yaml", name="faulty", losses=None, miners=None, cells=cells,
                             slurm={"log_folder": str(jobs)})
    run = dmlbench_study(study_path, "--executor", "submitit-local", "--jobs", "2", "--no-report")
    assert run.returncode == 1
    broken, other = load_study(study_path).cells
    assert other.is_done() and not broken.is_done()
    assert "1 of 2 cells failed (the others finished)" in run.stderr
    assert f"{broken.run_id} failed: RuntimeError: planted failure" in run.stderr
    failure = json.loads((broken.run_dir / "failure.json").read_text())
    assert failure["error"] == "RuntimeError: planted failure" and "raise RuntimeError" in failure["traceback"]
    assert any("RunFailed" in log.read_text() for log in jobs.rglob("*_log.err"))  # the failed job's own log


SLURM = {"partition": "gpu", "account": "proj-42", "qos": "high", "constraint": "a100|h100", "gpus_per_node": 2,
         "cpus_per_task": 6, "mem_gb": 48, "timeout_min": 90, "array_parallelism": 3, "job_name": "dml",
         "setup": ["module load cuda/12.4", "source .venv/bin/activate"],
         "additional_parameters": {"mail-type": "END", "exclusive": True}}


@pytest.fixture
def slurm_commands(tmp_path, monkeypatch):
    """This machine has no Slurm: an srun to be found (submitit only checks it is there) and an sbatch
    that accepts the script, as Slurm's does, and answers with a job id."""
    bin_dir = tmp_path / "slurm-bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho \"$1\" >> \"$(dirname \"$0\")/submitted\"\n"
                                    "echo 'Submitted batch job 4242'\n")
    for name in ("srun", "sbatch"):
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir), prepend=os.pathsep)
    return bin_dir


def sbatch_lines(script):
    return [line for line in script.splitlines() if line.startswith("#SBATCH")]


def test_slurm_settings_become_the_submitted_array_script(isolated, tmp_path, slurm_commands):
    jobs = tmp_path / "jobs"
    study = load_study(write_study(tmp_path / "study.yaml", miners=["none", "semi-hard", "batch-hard"], seeds=[0, 1],
                                   slurm={**SLURM, "log_folder": str(jobs)}))
    executor = submitit_executor(study, "slurm")
    cells = study.cells[:5]
    submitted = executor.submit_array([CellJob(str(study.path), cell.run_id, {}) for cell in cells])
    assert [job.job_id for job in submitted] == [f"4242_{i}" for i in range(5)]
    assert len((slurm_commands / "submitted").read_text().splitlines()) == 1  # one sbatch: one array
    script = (jobs / "4242" / "4242_submission.sh").read_text()
    assert set(sbatch_lines(script)) >= {
        "#SBATCH --partition=gpu", "#SBATCH --account=proj-42", "#SBATCH --qos=high",
        "#SBATCH --constraint='a100|h100'", "#SBATCH --gpus-per-node=2", "#SBATCH --cpus-per-task=6",
        "#SBATCH --mem=48GB", "#SBATCH --time=90", "#SBATCH --array=0-4%3", "#SBATCH --job-name=dml",
        "#SBATCH --mail-type=END", "#SBATCH --exclusive", "#SBATCH --signal=USR2@90",
        f"#SBATCH --output={jobs}/%A_%a/%A_%a_0_log.out"}
    setup, command = script.index("module load cuda/12.4\nsource .venv/bin/activate"), script.index("srun ")
    assert setup < command and f"{sys.executable} -u -m submitit.core._submit {jobs}/%j" in script

    # what each array task will run: the cell's job, which requeues itself when pre-empted or out of time
    cell_job = submitted[3].submission().function
    assert isinstance(cell_job, CellJob) and cell_job.run_id == cells[3].run_id
    assert cell_job.checkpoint().function is cell_job

    # --jobs overrides the study's array_parallelism
    submitit_executor(study, "slurm", jobs=2).submit_array([CellJob(str(study.path), c.run_id, {}) for c in cells])
    assert "#SBATCH --array=0-4%2" in (jobs / "4242" / "4242_submission.sh").read_text()


def test_slurm_defaults_without_a_slurm_key(isolated, tmp_path, slurm_commands):
    study = load_study(write_study(tmp_path / "study.yaml", name="plain"))
    assert study.slurm == {} and job_folder(study) == REPO_ROOT / "build" / "jobs" / "plain"
    executor = submitit_executor(study, "slurm")
    slurm = executor._executor  # the SlurmExecutor behind submitit's AutoExecutor
    slurm.parameters["map_count"] = 2  # as submitit's array submission sets it
    lines = sbatch_lines(slurm._make_submission_file_text(slurm._submitit_command_str, "uid"))
    assert {"#SBATCH --gpus-per-node=1", "#SBATCH --cpus-per-task=8", "#SBATCH --time=240",
            "#SBATCH --job-name=dmlbench-plain", "#SBATCH --array=0-1%2"} <= set(lines)
    assert not any(line.startswith(("#SBATCH --partition", "#SBATCH --mem")) for line in lines)
    cpu_only = load_study(write_study(tmp_path / "study.yaml", slurm={"gpus_per_node": 0}))
    script = submitit_executor(cpu_only, "slurm")._executor._make_submission_file_text("python job.py", "uid")
    assert "--gpus-per-node" not in script


VALID_KEYS = "valid keys: " + ", ".join(SLURM_SETTINGS)


@pytest.mark.parametrize("slurm,message", [
    ("gpu", "slurm: expected a mapping with keys partition, account, qos"),
    ({"partion": "gpu"}, f"slurm: unknown key 'partion'; {VALID_KEYS}"),
    ({"partition": ""}, "slurm: partition: expected a partition name, got ''"),
    ({"partition": 3}, "slurm: partition: expected a partition name, got 3"),
    ({"gpus_per_node": -1}, "slurm: gpus_per_node: expected a whole number of GPUs, 0 or more, got -1"),
    ({"cpus_per_task": 0}, "slurm: cpus_per_task: expected a whole number of cores, at least 1, got 0"),
    ({"mem_gb": "32G"}, "slurm: mem_gb: expected a number of gigabytes above 0, got '32G'"),
    ({"timeout_min": 1.5}, "slurm: timeout_min: expected a whole number of minutes, at least 1, got 1.5"),
    ({"timeout_min": True}, "slurm: timeout_min: expected a whole number of minutes, at least 1, got True"),
    ({"array_parallelism": 0}, "slurm: array_parallelism: expected a whole number of cells at once, at least 1, got 0"),
    ({"log_folder": None}, "slurm: log_folder: expected a folder path, got None"),
    ({"setup": "module load cuda"}, "slurm: setup: expected a list of shell lines, got 'module load cuda'"),
    ({"additional_parameters": ["mail-type=END"]},
     "slurm: additional_parameters: expected a mapping of sbatch option -> value (text, number or true), "
     "got ['mail-type=END']"),
    ({"additional_parameters": {"time": "1:00:00"}},
     "slurm: additional_parameters: 'time' is given by the key 'timeout_min'; set that instead"),
    ({"additional_parameters": {"array": "0-3"}},
     "slurm: additional_parameters: 'array' is set by submitit (options it sets: array, output, error"),
])
def test_bad_slurm_settings_fail_when_the_study_is_loaded(tmp_path, slurm, message):
    with pytest.raises(ConfigError) as info:
        load_study(write_study(tmp_path / "study.yaml", slurm=slurm))
    assert message in str(info.value) and str(tmp_path / "study.yaml") in str(info.value)


@pytest.mark.parametrize("args,message", [
    (["--jobs", "0"], "argument --jobs: expected a whole number of cells at once, at least 1; got '0'"),
    (["--jobs", "two"], "argument --jobs: expected a whole number of cells at once, at least 1; got 'two'"),
    (["--executor", "pbs"], "argument --executor: invalid choice: 'pbs' (choose from 'local', 'submitit-local', 'slurm')"),
])
def test_bad_executor_options_fail_naming_the_value(tmp_path, args, message):
    run = dmlbench_study(write_study(tmp_path / "study.yaml"), *args)
    assert run.returncode == 2 and message in run.stderr


def test_run_study_rejects_bad_executors_and_jobs_below_one(isolated, tmp_path, monkeypatch):
    study = load_study(write_study(tmp_path / "study.yaml"))
    with pytest.raises(ConfigError, match="jobs: expected a whole number of cells at once, at least 1, got 0"):
        run_study(study, jobs=0)
    with pytest.raises(ConfigError, match="unknown executor 'pbs'; valid executors: local, submitit-local, slurm"):
        run_study(study, executor="pbs")
    monkeypatch.setenv("PATH", str(tmp_path))  # no Slurm commands
    with pytest.raises(ConfigError, match="executor slurm: no sbatch or srun here"):
        run_study(study, executor="slurm")
    assert not any(cell.run_dir.exists() for cell in study.cells)


def test_a_damaged_failure_record_still_gives_a_summary_line(isolated, tmp_path):
    from dmlbench.study.executors import _failure_line
    from dmlbench.study.cells import load_study

    study_path = tmp_path / "one.yaml"
    study_path.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "losses": ["triplet"], "miners": ["random"],
                                          "settings": tiny_settings()}))
    cell = load_study(study_path).cells[0]
    cell.run_dir.mkdir(parents=True)
    (cell.run_dir / "failure.json").write_text('{"error": ')
    line = _failure_line(cell, "exited with status 1")
    assert line.startswith(f"{cell.run_id} failed") and "failure.json cannot be read" in line
