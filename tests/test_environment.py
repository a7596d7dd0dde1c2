"""The environment: pins in pyproject.toml and environment.yml agree, the venv holds them, and the
Makefile's stamp makes the install happen once."""

import os
import re
import shutil
import subprocess
import tomllib
from importlib import metadata

import yaml

from dmlbench.paths import REPO_ROOT


def pyproject_pins():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return project["dependencies"] + project["optional-dependencies"]["test"]


def conda_pins():
    env = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    return [p for p in pip if not p.startswith("-e")]


def test_every_dependency_is_pinned_exactly():
    for pin in pyproject_pins():
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9A-Za-z.+-]*", pin), pin
    assert "torch==2.14.1" in pyproject_pins() and "torchvision==0.29.1" in pyproject_pins()


def test_environment_yml_agrees_with_pyproject():
    normalise = lambda pins: sorted(p.lower().replace("_", "-") for p in pins)  # noqa: E731
    assert normalise(conda_pins()) == normalise(pyproject_pins())


def test_installed_versions_are_the_pinned_ones():
    for pin in pyproject_pins():
        name, version = pin.split("==")
        assert metadata.version(name) == version, pin


def test_makefile_installs_once_behind_a_stamp(tmp_path):
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    venv = tmp_path / "venv"
    dry = lambda: subprocess.run(["make", "-n", "setup", f"VENV={venv}"], cwd=tmp_path,  # noqa: E731
                                 capture_output=True, text=True, check=True).stdout
    first = dry()
    assert "pip install" in first and "-m venv" in first
    venv.mkdir()
    stamp = venv / ".dmlbench-installed"
    stamp.touch()
    assert "pip install" not in dry()  # installed: nothing to do
    os.utime(stamp, (1, 1))  # pyproject.toml changed since the install: reinstall
    assert "pip install" in dry()


def test_ci_runs_the_readme_test_command():
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    assert "make test" in ci and os.access(REPO_ROOT / ".ci" / "run", os.X_OK)
    readme = (REPO_ROOT / "README.md").read_text()
    assert "make test" in readme and "make all" in readme
