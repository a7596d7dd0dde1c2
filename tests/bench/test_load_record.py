"""bench.timing's load record: what it reads and when it calls a measurement under load."""

from dmlbench.bench.timing import LOAD_LIMIT, load_note, load_record, load_span


def _record(busy_s: float, own_s: float, time_s: float, load_1m: float = 0.1, cores: int = 2) -> dict:
    return {"load_1m": load_1m, "load_5m": load_1m, "load_15m": load_1m, "cores": cores, "busy_s": busy_s,
            "own_s": own_s, "time_s": time_s}


def test_other_processes_cpu_decides_under_load_and_own_cpu_does_not():
    before = _record(busy_s=100.0, own_s=10.0, time_s=0.0)
    # 4 CPU seconds in 2 s, 3.9 of them this process's own: the others used 0.05 cores
    quiet = load_span(before, _record(busy_s=104.0, own_s=13.9, time_s=2.0, load_1m=1.9))
    assert quiet["others_cores"] == 0.05 and quiet["under_load"] is False
    assert quiet["load_before"] == 0.1 and quiet["load_after"] == 1.9
    # the others used 1.5 of 2 cores
    busy = load_span(before, _record(busy_s=104.0, own_s=11.0, time_s=2.0))
    assert busy["others_cores"] == 1.5 and busy["under_load"] is True
    assert "UNDER LOAD" in load_note(busy) and "not under load" in load_note(quiet)


def test_without_cpu_accounting_the_load_average_before_decides():
    nan = float("nan")
    idle = load_span(_record(nan, 0.0, 0.0, load_1m=0.2), _record(nan, 1.0, 1.0, load_1m=3.0))
    loaded = load_span(_record(nan, 0.0, 0.0, load_1m=LOAD_LIMIT * 2 + 0.5), _record(nan, 1.0, 1.0))
    assert idle["under_load"] is False and loaded["under_load"] is True


def test_a_real_record_has_every_field():
    before = load_record()
    span = load_span(before, load_record())
    assert set(before) == {"load_1m", "load_5m", "load_15m", "cores", "busy_s", "own_s", "time_s"}
    assert before["cores"] >= 1 and isinstance(span["under_load"], bool)
