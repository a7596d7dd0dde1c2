"""The vectors of the index benchmark (``dmlbench bench indexes --data NAME``).

- ``fashion-mnist``: the raw Fashion-MNIST pixels, 784 values per image, as in ann-benchmarks'
  fashion-mnist-784-euclidean: the 60,000 training images are indexed (the first ``n`` of them when
  ``n`` is smaller) and the test images are the queries. The images come from the project's own copy
  (:mod:`dmlbench.datasets.fashion_mnist`: ``$DMLBENCH_DATA``, Debian's package, the cache); nothing is
  downloaded here. The pixel vectors are L2-normalised before indexing, because every faiss family of
  :mod:`dmlbench.evaluation.indexes.families` ranks unit vectors: the neighbours are those of the
  smallest angle between raw pixel vectors, not ann-benchmarks' Euclidean ones, so its plots and these
  do not measure the same neighbours.
- ``manifold``: points on a smooth curved surface of low intrinsic dimension, with no cluster count
  an IVF index could match: a ``latent``-dimensional standard Gaussian draw is mapped into ``dim``
  dimensions by a fixed random two-layer network with tanh units, a little isotropic noise is added,
  and the result is L2-normalised; the queries are fresh draws through the same network.
- ``clustered``: the earlier generator (a mixture of ``clusters`` Gaussian blobs, each in a 16-
  dimensional subspace of its own). Its well-separated clusters flatter IVF, whose lists line up with
  them; it is kept for comparison, not as the benchmark's headline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError
from ..evaluation.indexes.sweep import normalized

DATA = ("fashion-mnist", "manifold", "clustered")
DEFAULT_N = {"fashion-mnist": 60_000, "manifold": 200_000, "clustered": 200_000}
MANIFOLD = {"dim": 128, "latent": 12, "hidden": 256, "noise": 0.02}
CLUSTERED = {"dim": 128, "clusters": 1000, "spread": 0.06}


@dataclass
class IndexData:
    name: str
    items: np.ndarray  # (n, d) float32, L2-normalised
    queries: np.ndarray  # (Q, d) float32, L2-normalised
    description: str  # one line for the table's header


def load_data(name: str, n: int | None = None, queries: int = 1000) -> IndexData:
    """The items and queries of data set ``name`` (one of ``DATA``)."""
    if name not in DATA:
        raise ConfigError(f"unknown index benchmark data {name!r}; choose from {', '.join(DATA)}")
    n = DEFAULT_N[name] if n is None else n
    if n < 2 or queries < 1:
        raise ConfigError(f"--n must be at least 2 and --queries at least 1, got n={n}, queries={queries}")
    if name == "fashion-mnist":
        return fashion_mnist_pixels(n, queries)
    if name == "manifold":
        items, query_set = manifold(n, seed=1), manifold(queries, seed=2)
        text = (f"{len(items):,} x {MANIFOLD['dim']} points of a {MANIFOLD['latent']}-dimensional manifold (a Gaussian "
                f"latent through a fixed random tanh network of {MANIFOLD['hidden']} units, noise {MANIFOLD['noise']}), "
                f"L2-normalised")
        return IndexData(name, items, query_set, text)
    items, _ = clustered(n, CLUSTERED["dim"], CLUSTERED["clusters"], CLUSTERED["spread"], seed=1)
    query_set, _ = clustered(queries, CLUSTERED["dim"], CLUSTERED["clusters"], CLUSTERED["spread"], seed=2)
    text = (f"{n:,} x {CLUSTERED['dim']} clustered vectors ({CLUSTERED['clusters']} clusters of rank-16 spread "
            f"{CLUSTERED['spread']} and isotropic noise 0.01)")
    return IndexData(name, items, query_set, text)


def fashion_mnist_pixels(n: int, queries: int) -> IndexData:
    """The first ``n`` training images indexed and the first ``queries`` test images as queries, as
    L2-normalised vectors of their 784 raw pixel values."""
    from ..datasets.fashion_mnist import load_arrays, locate

    paths, where = locate(None, allow_download=False)
    arrays = load_arrays(paths)
    train, test = arrays["train_images"], arrays["test_images"]
    if n > len(train) or queries > len(test):
        raise ConfigError(f"fashion-mnist ({where}) has {len(train):,} training images to index and {len(test):,} test "
                          f"images to query, asked for n={n:,} and queries={queries:,}; valid --n: 2 to {len(train):,}, "
                          f"valid --queries: 1 to {len(test):,}")
    train = train.reshape(len(train), -1)[:n].astype(np.float32)
    test = test.reshape(len(test), -1)[:queries].astype(np.float32)
    text = (f"{len(train):,} Fashion-MNIST training images as raw 784-pixel vectors, L2-normalised (angular "
            f"neighbours, not ann-benchmarks' Euclidean), queried by {len(test):,} test images; from {where}")
    return IndexData("fashion-mnist", normalized(train), normalized(test), text)


def manifold(n: int, seed: int, dim: int = MANIFOLD["dim"], latent: int = MANIFOLD["latent"],
             hidden: int = MANIFOLD["hidden"], noise: float = MANIFOLD["noise"]) -> np.ndarray:
    """(n, dim) unit vectors: tanh(z W1 + b1) W2 + noise, z ~ N(0, I_latent), L2-normalised. The
    network's weights come from seed 0 always (items and queries share the surface); ``seed`` draws
    the points, in blocks of 50,000."""
    shape = np.random.default_rng(0)
    w1 = shape.standard_normal((latent, hidden), dtype=np.float32) * np.float32(1.5 / np.sqrt(latent))
    b1 = shape.standard_normal(hidden, dtype=np.float32) * np.float32(0.5)
    w2 = shape.standard_normal((hidden, dim), dtype=np.float32) / np.float32(np.sqrt(hidden))
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        size = min(50_000, n - start)
        z = rng.standard_normal((size, latent), dtype=np.float32)
        x = np.tanh(z @ w1 + b1) @ w2 + np.float32(noise) * rng.standard_normal((size, dim), dtype=np.float32)
        out[start:start + size] = normalized(x)
    return out


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
