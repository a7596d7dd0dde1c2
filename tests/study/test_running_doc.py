"""docs/running.md's ways to rerun a study do what it says (issue 29, item 4): `make all RESULTS=DIR REUSE=none`
trains every cell again, while `RESULTS=DIR` alone (which the page used to give as a rerun from scratch)
reuses the shipped runs."""

from __future__ import annotations

import os
import re
import subprocess

from dmlbench import paths
from dmlbench.paths import REPO_ROOT
from dmlbench.study.cells import load_study

SECTION = "## Results folders and reuse"


def rerun_commands() -> list[str]:
    text = (REPO_ROOT / "docs" / "running.md").read_text(encoding="utf-8")
    section = text[text.index(SECTION):text.index("\n## ", text.index(SECTION) + 1)]
    lines = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", section, re.S)
             for line in block.splitlines()]
    return [line for line in lines if line.startswith("make all ")]


def exported(assignments: list[str]) -> dict[str, str]:
    """DMLBENCH_RESULTS and DMLBENCH_REUSE as the Makefile exports them for these make variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMLBENCH_")}
    rule = 'print-env: ; @echo "$${DMLBENCH_RESULTS-}|$${DMLBENCH_REUSE-}"'
    out = subprocess.run(["make", "-s", "--no-print-directory", "--eval", rule, "print-env", *assignments],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True).stdout
    results, reuse = out.strip().split("|")
    return {"DMLBENCH_RESULTS": results, "DMLBENCH_REUSE": reuse}


def study_in(tmp_path, monkeypatch, line: str, *, drop: str = ""):
    """The study a doc's make line runs, loaded with the environment that line gives (its RESULTS moved
    into ``tmp_path``; ``drop``: a variable left out), and the folders it reuses."""
    words = [word for word in line.split()[2:] if "=" in word and not word.startswith(drop + "=")]
    words = [f"RESULTS={tmp_path / 'rerun'}" if word.startswith("RESULTS=") else word for word in words]
    for name, value in exported(words).items():
        if value:
            monkeypatch.setenv(name, value)
        else:
            monkeypatch.delenv(name, raising=False)
    study = next((w.split("=", 1)[1] for w in words if w.startswith("STUDY=")), "studies/default.yaml")
    return load_study(REPO_ROOT / study, check_networks=False), paths.reuse_folders()


def test_the_documented_rerun_from_scratch_reuses_nothing(tmp_path, monkeypatch):
    commands = rerun_commands()
    assert commands and all("REUSE=none" in line for line in commands), commands
    for line in commands:
        study, reused = study_in(tmp_path, monkeypatch, line)
        assert reused == [] and paths.results_dir() == tmp_path / "rerun", line
        assert study.cells and not any(cell.is_done() for cell in study.cells), line
        # without REUSE=none the same folder finds every cell finished in the shipped results
        study, reused = study_in(tmp_path, monkeypatch, line, drop="REUSE")
        assert paths.REPO_RESULTS in reused, line
        assert all(cell.is_done() for cell in study.cells), line
