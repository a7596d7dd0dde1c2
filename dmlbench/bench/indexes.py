"""Similarity-search indexes at scale: 1,000,000 x 128 float32 vectors on this machine.

The vectors are a synthetic clustered set standing in for a large gallery of learned embeddings:
``clusters`` centres drawn uniformly on the unit sphere, each vector a centre plus a Gaussian draw
in a 16-dimensional subspace of its cluster's own (scale ``spread``) plus a little isotropic noise,
L2-normalised; the queries are fresh draws from the same mixture. A low intrinsic dimension within
each cluster is what real embeddings and the ann-benchmarks sets have; isotropic noise in all 128
dimensions would make every cluster's points nearly equidistant, where no graph or tree helps.
Every index of :func:`specs` is built over the vectors and searched with every setting of its
sweep (:func:`dmlbench.evaluation.indexes.sweep.evaluate_indexes`): k-NN recall@10 against the
exact neighbours (float64), relative distance error, queries per second on one thread and on every
core, build time, bytes per vector, and for the exact metric indexes (ball tree, pivots, on the
first ``exact_queries`` queries) the fraction of distance computations evaluated. The process's peak
resident memory is printed with each index.

    python -m dmlbench bench indexes                   # 1M x 128, results/bench/indexes-cpu.{csv,txt}
    python -m dmlbench bench indexes --n 100000 --out /tmp/bench

Beyond one machine, the same families shard: faiss's ``IndexShards`` splits the vectors over
sub-indexes (each built like the ones here) and merges their answers, ``IndexReplicas`` copies one
index and splits the queries, and ``faiss.contrib.client_server`` serves a sub-index per machine to
a client that queries them all; an IVF index sharded by inverted list needs only the trained
coarse quantiser in common (``faiss.contrib.ivf_tools``).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation.indexes import IndexSpec
from ..evaluation.indexes.sweep import Queries, evaluate_indexes, normalized
from ..fileio import atomic_write_json
from ..paths import results_dir
from .timing import load_note, load_record, load_span, machine_line, save_table

SHARDING = ("beyond one machine: faiss.IndexShards splits the vectors over sub-indexes and merges their answers, "
            "faiss.IndexReplicas copies an index and splits the queries, faiss.contrib.client_server serves one "
            "sub-index per machine; IVF shards share only the trained coarse quantiser")


def specs(n: int) -> list[IndexSpec]:
    """The benchmark's indexes: IVF lists and PQ codes sized for ``n`` vectors of 128 dimensions."""
    nlist = 1024 if n >= 200_000 else 256
    return [IndexSpec.make("flat"),
            IndexSpec.make("hnsw", M=32, ef_construction=40, sweep=(16, 32, 64, 128, 256)),
            IndexSpec.make("ivf-flat", nlist=nlist, sweep=(1, 4, 16, 64)),
            IndexSpec.make("ivf-pq", nlist=nlist, m=16, sweep=(4, 16, 64)),
            IndexSpec.make("ivf-pq", nlist=nlist, m=32, sweep=(16, 64)),
            IndexSpec.make("sq8"),
            IndexSpec.make("ball-tree", leaf_size=40),
            IndexSpec.make("pivots", pivots=16)]


def clustered(n: int, dim: int, clusters: int, spread: float, seed: int, rank: int = 16,
              noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 unit vectors of a Gaussian mixture and their cluster ids, drawn in blocks:
    a centre on the unit sphere, plus ``spread`` times a standard normal draw in a random ``rank``-
    dimensional subspace of its own, plus isotropic noise ``noise`` per dimension. The centres and
    subspaces come from ``seed`` 0 always, so items and queries share them; ``seed`` draws the points."""
    shape = np.random.default_rng(0)
    centres = normalized(shape.standard_normal((clusters, dim), dtype=np.float32))
    bases = shape.standard_normal((clusters, rank, dim), dtype=np.float32) / np.sqrt(rank).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        part = labels[start:start + 50_000]
        latent = rng.standard_normal((len(part), 1, rank), dtype=np.float32)
        within = (latent @ bases[part])[:, 0]  # (b, dim)
        out[start:start + len(part)] = normalized(centres[part] + spread * within
                                                  + noise * rng.standard_normal((len(part), dim), dtype=np.float32))
    return out, labels


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def run(args: argparse.Namespace) -> pd.DataFrame:
    started = time.perf_counter()
    items, _ = clustered(args.n, args.dim, args.clusters, args.spread, seed=1)
    queries, _ = clustered(args.queries, args.dim, args.clusters, args.spread, seed=2)
    print(f"{args.n:,} x {args.dim} vectors ({items.nbytes / 2 ** 30:.2f} GiB), {args.queries} queries, "
          f"generated in {time.perf_counter() - started:.0f} s; peak memory {peak_rss_gb():.2f} GiB", flush=True)
    rows = []
    for spec in specs(args.n):
        found = evaluate_indexes(items, None, Queries(queries), [spec], exact_queries=args.exact_queries,
                                 log=lambda line: print(line, flush=True))["rows"]
        for row in found:
            row["peak_rss_gb"] = peak_rss_gb()
        print(f"{spec.name}: built in {found[0]['build_s']:.1f} s, {found[0]['bytes_per_vector']:.1f} bytes per "
              f"vector; peak memory {peak_rss_gb():.2f} GiB", flush=True)
        rows += found
    table = pd.DataFrame(rows)
    table.insert(0, "n", args.n)
    table["setting"] = [" ".join(f"{k}={v}" for k, v in s.items()) or "-" for s in table["setting"]]
    return table.drop(columns=["recall@1", "map@r", "exact_recall@1", "exact_map@r", "exact"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dmlbench bench indexes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors indexed (default 1,000,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=0.06, help="scale of a cluster's own 16-dimensional spread")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--exact-queries", type=int, default=50, help="queries of the ball tree and the pivots")
    parser.add_argument("--out", type=Path, default=None, help="folder of the tables (default results/bench)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    before = load_record()
    table = run(args)
    load = load_span(before, load_record())
    table = table.assign(**load)
    import torch

    header = (f"Similarity-search indexes over {args.n:,} x {args.dim} clustered float32 vectors ({args.clusters} "
              f"clusters of rank-16 spread {args.spread} and isotropic noise 0.01), {args.queries} queries, k = 10; {machine_line(torch.device('cpu'))}; "
              f"faiss {_faiss_version()}; {load_note(load)}\nknn_recall = recall@10 against the exact neighbours; qps = queries per "
              f"second, batch, best of up to 3 (qps_all on {int(table['threads_all'].iloc[0])} threads); "
              f"distance_fraction = distance computations / n (ball tree: its node centres included); "
              f"peak_rss_gb = the process's high-water mark so far; total {time.perf_counter() - started:.0f} s\n"
              f"{SHARDING}")
    out = args.out or results_dir() / "bench"
    out.mkdir(parents=True, exist_ok=True)
    path = save_table(_rounded(table), "indexes-cpu", header, out)
    atomic_write_json(out / "indexes-cpu.json", {"header": header, "rows": table.to_dict("records"),
                                                 "total_s": time.perf_counter() - started})
    print(path.read_text())
    return 0


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    """The printed table: whole queries per second, build seconds to 2 digits, fractions to 4."""
    return table.round({"qps_1": 0, "qps_all": 0, "build_s": 2, "bytes_per_vector": 1, "knn_recall": 4,
                        "relative_distance_error": 5, "distance_fraction": 4, "peak_rss_gb": 2})


def _faiss_version() -> str:
    import faiss

    return faiss.__version__
