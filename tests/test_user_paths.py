"""A file in the working directory never stands in for an installed package (issue 30, item 8)."""

from __future__ import annotations

import os
import subprocess
import sys

PLANTED = '''
import pathlib
pathlib.Path("planted-ran").write_text("a planted faiss.py ran")
raise RuntimeError("planted faiss imported")
'''

USER = '''
class Thing:
    """A user's class, imported by name from the working directory."""
'''

PROBE = '''
import sys
from dmlbench import cli
cli._search_working_directory()
import faiss
from dmlbench.registry import import_object
print(faiss.__file__)
print(import_object("mything:Thing").__module__)
'''


def test_a_faiss_py_in_the_working_directory_is_not_imported_but_user_modules_are(tmp_path):
    (tmp_path / "faiss.py").write_text(PLANTED)
    (tmp_path / "mything.py").write_text(USER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DMLBENCH_USER_PATH")}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    faiss_file, module = done.stdout.split()
    assert not faiss_file.startswith(str(tmp_path)), faiss_file
    assert module == "mything"
    assert not (tmp_path / "planted-ran").exists()


def test_notebook_kernels_get_the_working_directory_after_the_environment(tmp_path, monkeypatch):
    from dmlbench import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DMLBENCH_USER_PATH", raising=False)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.setattr(sys, "path", list(sys.path))
    cli._search_working_directory()
    assert os.environ["DMLBENCH_USER_PATH"] == os.path.realpath(tmp_path)
    assert "PYTHONPATH" not in os.environ, "PYTHONPATH would put the folder before the kernel's packages"


def test_a_relative_data_root_is_read_from_the_folder_the_command_ran_in(tmp_path, monkeypatch, tiny_fmnist):
    """The notebook kernel runs in the repository; a data_root given relative to the user's folder must
    still be found there (it was checked from the user's folder, then read from the repository's)."""
    import shutil

    from dmlbench.config import RunConfig

    user = tmp_path / "user"
    shutil.copytree(tiny_fmnist, user / "mydata")
    elsewhere = tmp_path / "kernel"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DMLBENCH_USER_PATH", str(user))
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DMLBENCH_DOWNLOAD", "0")
    config = RunConfig(dataset="fashion-mnist", loss="triplet", miner="semi-hard", data_root="mydata")
    config.validate()
    assert len(config.load_splits().test) > 0
