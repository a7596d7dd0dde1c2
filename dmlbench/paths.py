"""Where the study's files live: the repository's notebooks/, studies/ and results/."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT = PACKAGE_DIR.parent
REPO_ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "notebooks").is_dir() else Path.cwd()


def results_dir() -> Path:
    """$DMLBENCH_RESULTS, else the repository's results/ folder."""
    return Path(os.environ.get("DMLBENCH_RESULTS") or REPO_ROOT / "results")


def runs_dir() -> Path:
    return results_dir() / "runs"


def notebook(name: str) -> Path:
    return REPO_ROOT / "notebooks" / name


def data_root_folder(data_root: str) -> Path:
    """A run's data_root as the run reads it: a relative path from here, else from the repository
    (where notebook kernels run)."""
    given = Path(data_root).expanduser()
    return REPO_ROOT / given if not given.is_dir() and (REPO_ROOT / given).is_dir() else given
