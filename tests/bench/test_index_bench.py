"""The index benchmark on small data: every swept setting measured (until its sweep may stop), batch and one-at-a-time speeds,
frontier flags that are the Pareto frontier, re-ranking that does not lose recall, and the README and
docs blocks reading the files it writes."""

import json

import numpy as np
import pandas as pd
import pytest

from dmlbench.bench import indexes as bench
from dmlbench.bench.index_data import load_data, manifold
from dmlbench.errors import ConfigError


@pytest.fixture(scope="module")
def small_pq():
    """Smaller product-quantiser codes: 256-centroid codebooks on a few hundred vectors train in
    seconds each, and the grid has four of them."""
    saved = dict(bench.PQ_SIZES)
    bench.PQ_SIZES.update({128: (8, 16), 784: (28, 49)})
    yield
    bench.PQ_SIZES.clear()
    bench.PQ_SIZES.update(saved)


@pytest.fixture(scope="module")
def results(tmp_path_factory, small_pq):
    """The benchmark's files for manifold (n 1,000) and the tiny Fashion-MNIST of the tests (400 images)."""
    from tests.support import write_fashion_mnist

    root = tmp_path_factory.mktemp("indexbench")
    data = write_fashion_mnist(root / "data" / "fashion-mnist")
    patch = pytest.MonkeyPatch()
    patch.setenv("DMLBENCH_DATA", str(data.parent))
    patch.setenv("DMLBENCH_CACHE", str(root / "cache"))
    patch.setenv("DMLBENCH_DOWNLOAD", "0")
    try:
        for name, n in (("manifold", 1000), ("fashion-mnist", 400)):
            assert bench.main(["--data", name, "--n", str(n), "--queries", "40", "--single-queries", "8",
                               "--exact-queries", "5", "--out", str(root / "bench")]) == 0
    finally:
        patch.undo()
    return root / "bench"


def _table(results, name) -> pd.DataFrame:
    return pd.DataFrame(json.loads((results / f"indexes-{name}.json").read_text())["rows"])


@pytest.mark.parametrize("name", ["manifold", "fashion-mnist"])
def test_every_swept_setting_has_a_row_until_its_sweep_may_stop(results, name):
    table = _table(results, name)
    n, dim = int(table["n"].iloc[0]), int(table["dim"].iloc[0])
    hnsw = table[table["family"] == "hnsw"]
    assert {(int(m), int(e)) for m, e in zip(hnsw["M"], hnsw["ef_construction"])} == {
        (m, e) for m in bench.HNSW_M for e in bench.HNSW_EF_CONSTRUCTION}
    assert sorted(table.loc[table["family"] == "ivf-flat", "nlist"].unique()) == bench.nlists(n)
    for index, rows in table[table["family"].isin(["hnsw", "ivf-flat", "ivf-pq"])].groupby("index"):
        key, values = ("ef_search", bench.EF_SEARCH) if rows["family"].iloc[0] == "hnsw" else ("nprobe", bench.NPROBE)
        planned = [f"{key}={v}" for v in values if key == "ef_search" or v <= rows["nlist"].iloc[0]]
        measured, found = list(rows["setting"]), rows.to_dict("records")
        assert measured == planned[:len(measured)], index
        assert len(measured) == len(planned) or bench._done(found), index  # stopped only where the rule says
        assert not any(bench._done(found[:i]) for i in range(1, len(found))), index  # and not before
    refine = table[table["family"] == "ivf-pq-refine"]
    nlist = int(refine["nlist"].iloc[0])
    assert list(refine["setting"]) == [f"nprobe={p} k_factor={f}" for p in bench.REFINE_NPROBE if p <= nlist
                                       for f in bench.K_FACTORS]
    assert list(refine["reranked"]) == [bench.K * f for p in bench.REFINE_NPROBE if p <= nlist for f in bench.K_FACTORS]
    assert set(table["family"]) == {"flat", "hnsw", "ivf-flat", "ivf-pq", "ivf-pq-refine", "pq", "sq8", "ball-tree",
                                    "pivots"}
    assert int(table["m"].dropna().min()) == bench.pq_sizes(dim)[0]


@pytest.mark.parametrize("name", ["manifold", "fashion-mnist"])
def test_speeds_in_both_modes_and_the_costs_are_recorded(results, name):
    table = _table(results, name)
    for column in ("qps_1", "qps_all", "qps_single", "latency_ms", "build_s", "bytes_per_vector"):
        assert (table[column] > 0).all(), column
    assert (table["single_queries"] == [5 if f in ("ball-tree", "pivots") else 8 for f in table["family"]]).all()
    flat = table[table["family"] == "flat"].iloc[0]
    assert flat["knn_recall"] == 1.0 and 4 * flat["dim"] <= flat["bytes_per_vector"] < 4 * flat["dim"] + 1
    refine = table[table["family"] == "ivf-pq-refine"]
    assert (refine["bytes_per_vector"] > 4 * refine["dim"]).all()  # the stored float vectors are counted


@pytest.mark.parametrize("name", ["manifold", "fashion-mnist"])
def test_reranking_never_loses_recall_at_the_same_nprobe(results, name):
    table = _table(results, name)
    small = int(table["m"].dropna().min())
    plain = table[(table["family"] == "ivf-pq") & (table["m"] == small)].set_index("setting")["knn_recall"]
    refine = table[table["family"] == "ivf-pq-refine"]
    for setting, recall in zip(refine["setting"], refine["knn_recall"]):
        nprobe = setting.split()[0]
        if nprobe in plain.index:
            assert recall >= plain[nprobe] - 1e-12, setting
    assert refine["knn_recall"].max() > plain.max()  # re-ranking more candidates finds what the codes misrank


@pytest.mark.parametrize("name", ["manifold", "fashion-mnist"])
def test_frontier_flags_are_the_pareto_frontier_of_each_family(results, name):
    table = _table(results, name)
    for mode, speed in bench.MODES.items():
        for family, rows in table.groupby("family"):
            for _, row in rows.iterrows():
                dominated = ((rows["knn_recall"] >= row["knn_recall"]) & (rows[speed] >= row[speed])
                             & ((rows["knn_recall"] > row["knn_recall"]) | (rows[speed] > row[speed]))).any()
                assert row[f"frontier_{mode}"] == (not dominated), (family, row["index"], row["setting"], mode)
            assert rows[f"frontier_{mode}"].any()
    assert bench.pareto([0.5, 0.9, 0.9, 1.0], [10, 5, 4, 5]).tolist() == [True, False, False, True]


def test_the_files_figure_and_generated_blocks(results):
    from dmlbench.reporting.readme import index_bench, render_index_block, render_index_table

    for name in ("manifold", "fashion-mnist"):
        png = results / f"indexes-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 150_000
        assert (results / f"indexes-{name}.csv").is_file()
        assert "qps_single = queries per second issued one per call" in (results / f"indexes-{name}.txt").read_text()
    bench_files = index_bench(results.parent)  # <results>/bench
    assert list(bench_files) == ["fashion-mnist", "manifold"]
    table = render_index_table(bench_files)
    for name, payload in bench_files.items():
        front = [r for r in payload["rows"] if r["frontier_batch"] or r["frontier_single"]]
        assert 0 < len(front) < len(payload["rows"])
        assert f"{len(front)} of the {len(payload['rows'])} rows measured" in table
        flat = next(r for r in payload["rows"] if r["family"] == "flat")
        assert f"{flat['qps_single']:,.0f} one at a time" in render_index_block(bench_files)
        assert "the exact metric indexes answered the first 5 queries" in table
    assert table.count("\n| ") == sum(1 + len([r for r in p["rows"] if r["frontier_batch"] or r["frontier_single"]])
                                      for p in bench_files.values())


def test_the_data_sets_and_their_errors(isolated):
    x = manifold(3000, seed=1)
    assert x.shape == (3000, 128) and abs(np.linalg.norm(x, axis=1) - 1).max() < 1e-5
    centred = x - x.mean(0)
    spectrum = np.linalg.svd(centred, compute_uv=False) ** 2
    assert spectrum[:12].sum() / spectrum.sum() > 0.75  # a low intrinsic dimension ...
    assert spectrum[0] / spectrum.sum() < 0.5  # ... not a line or a few clusters along one axis
    pixels = load_data("fashion-mnist", 100, 20)
    assert pixels.items.shape == (100, 784) and pixels.queries.shape == (20, 784)
    assert "angular" in pixels.description
    with pytest.raises(ConfigError, match="unknown index benchmark data 'sift'; choose from fashion-mnist, manifold, "
                                          "clustered"):
        bench.main(["--data", "sift"])
    with pytest.raises(ConfigError, match="--n must be at least 2"):
        load_data("manifold", 1)
    with pytest.raises(ConfigError, match="has 400 training images to index and 200 test images to query, asked for "
                                          "n=500 and queries=20; valid --n: 2 to 400"):
        load_data("fashion-mnist", 500, 20)
