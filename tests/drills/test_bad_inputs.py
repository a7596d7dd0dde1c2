"""The drill of bad inputs (issue 30): each answers with one line and its exit code, writes nothing."""

from __future__ import annotations

import pytest

from .cases import CASES
from .drive import drive


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_bad_input_is_answered_in_one_line(case, tmp_path, monkeypatch, tiny_fmnist):
    answer = drive(case, tmp_path, monkeypatch, tiny_fmnist)
    assert "Traceback" not in answer.output, answer.output
    assert answer.code == case.code, answer.output
    assert answer.matches(case.says), f"{case.says!r} not in {answer.line!r}"
    if case.code:
        assert answer.written == [], f"a refused command wrote {answer.written}"
