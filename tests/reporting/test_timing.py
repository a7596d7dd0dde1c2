"""The study's measured wall time: papermill time summed, and the span summed over sessions."""

import json

from dmlbench.reporting.readme import _sessions
from dmlbench.reporting.runs import execution_timing, sessions
from dmlbench.training.rundir import RunDir


def test_sessions_split_at_an_hour_without_any_cell_running():
    starts = [0.0, 10.0, 100.0, 100.0 + 3 * 3600, 100.0 + 3 * 3600 + 50]
    ends = [60.0, 120.0, 160.0, 100.0 + 3 * 3600 + 40, 100.0 + 3 * 3600 + 90]
    assert sessions(starts, ends) == [(0.0, 160.0), (100.0 + 3 * 3600, 100.0 + 3 * 3600 + 90)]
    assert sessions([0.0, 3600.0 + 60], [60.0, 3600.0 + 100]) == [(0.0, 3600.0 + 100)]  # a gap of exactly an hour
    assert sessions([], []) == []


def test_a_study_rerun_in_part_sums_its_sessions(tmp_path):
    records = {"a": (1000.0, 1050.0), "b": (1020.0, 1080.0), "c": (90000.0, 90030.0)}
    for run_id, (started, finished) in records.items():
        folder = RunDir(tmp_path / run_id)
        folder.path.mkdir()
        folder.execution.write_text(json.dumps({"started": started, "finished": finished,
                                                "notebook_wall_s": finished - started}))
    (tmp_path / "damaged").mkdir()
    RunDir(tmp_path / "damaged").execution.write_text("{")
    timing = execution_timing(tmp_path, ["a", "b", "c", "damaged", "absent"])
    assert timing == {"cells_timed": 3, "cells_wall_s": 50.0 + 60.0 + 30.0, "cells_span_s": 80.0 + 30.0,
                      "sessions": 2}
    assert "summed over the 2 sessions" in _sessions(timing) and _sessions({"sessions": 1}) == ""
