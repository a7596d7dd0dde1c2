"""Runs one drill case through the real command line and reads its answer."""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Answer:
    code: int
    output: str  # stderr then stdout
    line: str  # the line that answers: the error line where there is one, else the last line
    written: list[str]  # files the command left in the results folder

    def matches(self, pattern: str) -> bool:
        return re.search(pattern, self.line) is not None


def answering_line(stderr: str, stdout: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("dmlbench")]
    if errors:
        return errors[0]
    if lines:
        return lines[-1]
    out = [line for line in stdout.splitlines() if line.strip()]
    return out[-1] if out else ""


def drive(case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_fmnist: Path) -> Answer:
    """Run ``case`` in ``tmp_path`` (its files written there first) and return its answer."""
    from dmlbench import cli

    for name, text in case.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(text.encode("utf-8", "surrogateescape"))  # \udcff: the byte 0xff
    results = tmp_path / "results"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DMLBENCH_DATA", str(tiny_fmnist.parent))
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DMLBENCH_RESULTS", str(results))
    monkeypatch.setenv("DMLBENCH_DOWNLOAD", "0")
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main([str(part).format(tmp=tmp_path) for part in case.argv])
        except SystemExit as stop:  # argparse's usage errors
            code = stop.code if isinstance(stop.code, int) else 1
    written = sorted(str(p.relative_to(results)) for p in results.rglob("*") if p.is_file()) if results.exists() else []
    return Answer(int(code or 0), err.getvalue() + out.getvalue(), answering_line(err.getvalue(), out.getvalue()),
                  written)
