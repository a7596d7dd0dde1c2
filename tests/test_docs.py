"""The docs say what the repository does: they cite the project's own protocol page (no file outside
the repository), and the seed counts and split sizes they state are those of the study files and the
datasets' code."""

import re
import subprocess

from dmlbench.datasets.typefaces import BuildSpec
from dmlbench.paths import REPO_ROOT
from dmlbench.study.cells import load_study


def _tracked_text_files():
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    for name in names:
        path = REPO_ROOT / name
        if name and path.suffix in {".py", ".md", ".yaml", ".yml", ".ipynb", ".toml", ".txt", ".cfg"} \
                and not name.startswith("results/runs/") and path.is_file():
            yield name, path.read_text(encoding="utf-8", errors="replace")


def test_no_tracked_file_cites_a_protocol_page_outside_the_repository():
    # a quoted "PROTOCOL.md" is a test looking for the name, not a citation
    citing = [name for name, text in _tracked_text_files() if "PROTOCOL.md" in text.replace('"PROTOCOL.md"', "")]
    assert citing == [], f"cite docs/protocol.md, the project's own page: {citing}"
    assert (REPO_ROOT / "docs" / "protocol.md").is_file()


def _seeds(study: str) -> dict[str, int]:
    found: dict[str, set] = {}
    for cell in load_study(REPO_ROOT / "studies" / f"{study}.yaml", check_networks=False).cells:
        found.setdefault(cell.config.dataset, set()).add(cell.config.seed)
    return {dataset: len(seeds) for dataset, seeds in found.items()}


def test_the_seed_counts_the_docs_state_are_the_study_files():
    text = (REPO_ROOT / "docs" / "results-layout.md").read_text(encoding="utf-8")
    default, tuned = _seeds("default"), _seeds("tuned")
    stated = "`studies/default.yaml` gives each cell " + " and ".join(
        f"{n} seeds on {d}" if i == 0 else f"{n} on {d}" for i, (d, n) in enumerate(default.items()))
    assert re.sub(r"\s+", " ", stated) in re.sub(r"\s+", " ", text)
    assert f"`studies/tuned.yaml` {tuned['han-typefaces']} on han-typefaces" in re.sub(r"\s+", " ", text)
    words = {2: "two", 3: "three", 4: "four"}
    tuning = re.sub(r"\s+", " ", (REPO_ROOT / "docs" / "tuning.md").read_text(encoding="utf-8"))
    assert f"over {words[tuned['han-typefaces']]} seeds" in tuning


def test_the_split_sizes_the_docs_state_are_the_datasets():
    train, val, test = BuildSpec().split_characters
    for page in ("evaluation.md", "protocol.md"):
        text = re.sub(r"\s+", " ", (REPO_ROOT / "docs" / page).read_text(encoding="utf-8"))
        for count in (train, val, test):
            assert f"{count:,}" in text, (page, count)
    evaluation = re.sub(r"\s+", " ", (REPO_ROOT / "docs" / "evaluation.md").read_text(encoding="utf-8"))
    assert f"{train:,} for training, {val} for validation and {test} for the test" in evaluation


def _hand_written(text: str) -> str:
    """A docs page without its generated blocks (their wording is the generator's, dmlbench/reporting/readme.py)."""
    return re.sub(r"<!-- ([\w-]+):begin.*?<!-- \1:end -->", "", text, flags=re.S)


def test_the_gpu_check_page_speaks_to_a_user_with_a_gpu_machine():
    from dmlbench.bench import gpucheck
    from dmlbench.reporting.readme import CUDA_FILES

    text = _hand_written((REPO_ROOT / "docs" / "gpu-check.md").read_text(encoding="utf-8"))
    flat = re.sub(r"\s+", " ", text)
    for command in ("make setup", "make gpu-check", "make gpu-results FROM=", "make gpu-prepare", "make gpu-dry"):
        assert command in flat, command
    # the files the check's steps write, as the README's generator reads them, and where they go
    for name in CUDA_FILES:
        assert f"`{name}.csv`" in flat, name
    assert "results/bench/" in flat and "gpu-check-part" in flat
    # each step of the check with the time limit the code gives it, and the whole check's limit
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `")}
    for step, limit in gpucheck.STEP_LIMITS.items():
        assert rows[step].rstrip().endswith(f"| {limit} s |"), (step, limit)
    assert f"{gpucheck.CALL_BUDGET_S} s" in flat
    for dataset, loss, miner, seed in gpucheck.CELLS:
        assert all(word in flat.lower() for word in (dataset, loss, miner if miner != "none" else "no miner")), loss
        assert f"seed {seed}" in flat
    # written for a user with a GPU machine, not about the machines the project happened to use
    assert re.findall(r"\b(sessions?|device calls?|lent|build machines?)\b", text, flags=re.I) == []
