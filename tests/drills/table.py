"""``python -m tests.drills.table``: every drill case as a row "input | exit code | answering line"."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from ..support import write_fashion_mnist
from .cases import CASES
from .drive import drive


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        data = write_fashion_mnist(Path(scratch) / "data" / "fashion-mnist")
        print("| input | command | exit | first line |\n|---|---|---|---|")
        for number, case in enumerate(CASES, start=1):
            folder = Path(scratch) / f"case{number}"
            folder.mkdir()
            with pytest.MonkeyPatch.context() as monkeypatch:
                answer = drive(case, folder, monkeypatch, data)
            line = answer.line.replace("|", "\\|")
            print(f"| {case.name} | `dmlbench {' '.join(case.argv)}` | {answer.code} | {line[:200]} |")


if __name__ == "__main__":
    main()
