"""Where the study's files live: the repository's notebooks/, studies/ and results/.

Each study has its own results folder: the default study (``name: default``) writes to results/,
any other study to results/<its name>/ (the tuned study: results/tuned/), unless $DMLBENCH_RESULTS
(make's RESULTS) names another. Runs and searches are content-hashed, so a finished one in another
study's folder under results/ is the same run: a study reuses it there, read-only (:func:`reuse_folders`).
Ad-hoc runs ('dmlbench run --loss ...') go to the results folder's adhoc/, never to a study's runs/.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
_CHECKOUT = PACKAGE_DIR.parent
REPO_ROOT = _CHECKOUT if (_CHECKOUT / "pyproject.toml").is_file() and (_CHECKOUT / "notebooks").is_dir() else Path.cwd()
REPO_RESULTS = REPO_ROOT / "results"
DEFAULT_STUDY = "default"  # the study whose results are results/ itself (and the README's numbers)
ADHOC = "adhoc"  # ad-hoc runs: <results>/adhoc/<run id> (git ignores it)
# folders of a results folder that are not studies: no study may be named after one
RESERVED_NAMES = ("runs", "tuning", "tables", "figures", "indexes", "bench", ADHOC)
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def results_dir() -> Path:
    """$DMLBENCH_RESULTS, else the repository's results/ folder."""
    return Path(os.environ.get("DMLBENCH_RESULTS") or REPO_RESULTS)


def runs_dir() -> Path:
    return results_dir() / "runs"


def adhoc_runs_dir() -> Path:
    """Where 'dmlbench run --loss ...' writes: outside every study's runs/."""
    return results_dir() / ADHOC


def study_results_dir(name: str) -> Path:
    """The results folder of the study named ``name``: $DMLBENCH_RESULTS when set, else results/ for
    the default study and results/<name>/ for any other."""
    if os.environ.get("DMLBENCH_RESULTS"):
        return Path(os.environ["DMLBENCH_RESULTS"])
    if not STUDY_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ConfigError(f"study name {name!r} cannot name its results folder results/{name}/: a name is letters, "
                          f"digits, '.', '_' and '-', not one of {', '.join(RESERVED_NAMES)}; rename the study "
                          f"(its 'name:' key) or give RESULTS=DIR / DMLBENCH_RESULTS=DIR")
    return REPO_RESULTS if name == DEFAULT_STUDY else REPO_RESULTS / name


def use_study_results(name: str) -> Path:
    """Point this process, and every process it starts (cells, tuners, report kernels), at the study's
    results folder (:func:`study_results_dir`); returns it."""
    folder = study_results_dir(name)
    os.environ["DMLBENCH_RESULTS"] = str(folder.absolute())
    return folder


def reuse_folders() -> list[Path]:
    """The results folders whose finished runs and searches a study reuses, read-only, beside its own:
    $DMLBENCH_REUSE (folders separated by ':'; 'none' for none, to rerun everything), else the
    repository's shipped ones: results/ and each results/<study>/ with a summary.json."""
    given = os.environ.get("DMLBENCH_REUSE")
    if given is not None:
        folders = [] if given.strip().lower() in ("", "none") else [Path(p) for p in given.split(os.pathsep) if p]
    else:
        folders = [REPO_RESULTS] + sorted(p.parent for p in REPO_RESULTS.glob("*/summary.json"))
    own = results_dir().resolve()
    return [folder for folder in folders if folder.is_dir() and folder.resolve() != own]


def notebook(name: str) -> Path:
    return REPO_ROOT / "notebooks" / name


def data_root_folder(data_root: str) -> Path:
    """A run's data_root as the run reads it: a relative path from here, else from the folder the
    command ran in (``DMLBENCH_USER_PATH``: a notebook kernel runs in the repository, not there), else
    from the repository."""
    from .registry import USER_PATH_ENV

    given = Path(data_root).expanduser()
    if given.is_absolute() or given.is_dir():
        return given
    folders = [Path(p) for p in os.environ.get(USER_PATH_ENV, "").split(os.pathsep) if p] + [REPO_ROOT]
    return next((folder / given for folder in folders if (folder / given).is_dir()), given)
