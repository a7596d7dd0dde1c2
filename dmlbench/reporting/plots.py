"""Figures of a run: training curves, t-SNE of test embeddings, retrieval grids.

Each drawing function returns a matplotlib Figure and leaves saving and showing to the caller.

A t-SNE map magnifies the last bits of its input: the same checkpoint embedded on another processor
(other vector instructions, another BLAS kernel) gives embeddings that differ by rounding, and a map
whose points have visibly moved. So a saved map records what it was drawn from (:func:`tsne_source`:
the run's checkpoint, the test split, the drawing settings and the versions of scikit-learn and
matplotlib) in a PNG text chunk, and a rebuild keeps a map that records the same source
(:func:`kept_or_marked`): the picture changes when what it shows changes, not with the machine.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..evaluation.neighbours import knn
from ..training.rundir import RunDir

# Bump when what tsne_figure draws changes: maps recording an older source are then drawn again.
TSNE_DRAWING = 1
SOURCE_CHUNK = b"dmlbench-source"  # the PNG tEXt keyword under which a figure records what it was drawn from


def training_curves(history: Sequence[dict], title: str = "") -> Figure:
    """Left: mean training loss per epoch. Right: validation Recall@1 and MAP@R per epoch."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.4))
    trained = [h for h in history if h.get("loss") is not None]
    ax_loss.plot([h["epoch"] for h in trained], [h["loss"] for h in trained], marker="o", color="tab:gray")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss")
    epochs = [h["epoch"] for h in history]
    for key, label in (("val_recall@1", "Recall@1"), ("val_map@r", "MAP@R")):
        ax_val.plot(epochs, [h[key] for h in history], marker="o", label=label)
    ax_val.set(xlabel="epoch", ylabel="validation", title="validation (train classes, held-out images)")
    ax_val.legend(loc="lower right")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# t-SNE's iterations (250 of them early exaggeration): its default 1,000 take twice as long and draw the same
# clusters for the few hundred points a run's notebook shows
TSNE_ITERATIONS = 500


def tsne_figure(embeddings: torch.Tensor, labels: torch.Tensor, class_names: dict[int, str] | None = None, *,
                max_points: int = 1500, seed: int = 0, title: str = "") -> Figure:
    """2-D t-SNE of (a seeded random subset of) the embeddings, coloured by class.

    The map depends only on the embeddings and ``seed``, not on the machine's number of cores: t-SNE
    runs on one thread, since BLAS splits its matrix products (the distances, the PCA initialisation)
    between threads differently with their number, which moves the last bits, and t-SNE's
    iterations turn that into a different picture."""
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = embeddings.float().cpu().numpy()
    y = labels.cpu().numpy()
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(x), size=min(max_points, len(x)), replace=False))
    perplexity = min(30.0, max(1.0, (len(keep) - 1) / 3))  # 30, or less for a handful of points (it must be < n)
    with threadpool_limits(limits=1):  # BLAS and OpenMP alike
        points = TSNE(n_components=2, init="pca", learning_rate="auto", perplexity=perplexity, max_iter=TSNE_ITERATIONS,
                      random_state=seed).fit_transform(x[keep])
    fig, ax = plt.subplots(figsize=(6, 5))
    classes, index = np.unique(y[keep], return_inverse=True)
    if len(classes) <= 20:  # one series per class, for the legend; beyond 20 a legend hides the picture
        for i, c in enumerate(classes):
            name = (class_names or {}).get(int(c), str(c))
            ax.scatter(points[index == i, 0], points[index == i, 1], s=6, alpha=0.7, label=f"{c}: {name}")
        ax.legend(markerscale=3, fontsize=8, loc="best")
    else:  # one series, each class in the colour its own series would take (the cycle of ten): hundreds of
        # series cost a second of drawing
        cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        ax.scatter(points[:, 0], points[:, 1], s=6, alpha=0.7, c=[cycle[i % len(cycle)] for i in index])
    ax.set(xticks=[], yticks=[], title=title or f"t-SNE of {len(keep)} test embeddings")
    fig.tight_layout()
    return fig


def retrieval_grid(images, labels: torch.Tensor, embeddings: torch.Tensor, *, num_queries: int = 8,
                   k: int = 8, failures: int = 3, seed: int = 0, title: str = "", gallery=None) -> Figure:
    """Queries (left column) and their top-k neighbours, framed green when the label matches.

    ``images[i]`` is image i as (H, W) or (C, H, W). The neighbours come from the query set itself
    (the query excluded) or, with ``gallery=(images, labels, embeddings)``, from the gallery (In-Shop).
    The queries are drawn (seeded) one per class first; up to ``failures`` of the rows are then given
    to queries whose nearest neighbour has the wrong class, so the grid shows successes and errors.
    """
    emb = torch.nn.functional.normalize(embeddings.float(), dim=1)
    labels = labels.cpu()
    if gallery is None:
        ref_images, ref_labels, ref = images, labels, emb
    else:
        ref_images, ref_labels, ref = gallery[0], gallery[1].cpu(), torch.nn.functional.normalize(gallery[2].float(), dim=1)
    rng = np.random.default_rng(seed)
    _, top1 = knn(emb, None if gallery is None else ref, 1)
    wrong = np.flatnonzero((ref_labels[top1[:, 0]] != labels).numpy())
    n_fail = min(failures, len(wrong), num_queries)
    chosen = [int(rng.choice(np.flatnonzero(labels.numpy() == c))) for c in rng.permutation(np.unique(labels.numpy()))]
    chosen = chosen[:num_queries - n_fail]
    chosen += [int(i) for i in rng.choice(wrong, size=n_fail, replace=False)] if n_fail else []
    queries = torch.tensor(chosen)
    _, neighbours = knn(emb[queries], ref, k, exclude=queries if gallery is None else None)
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.1 * (k + 1), 1.15 * len(queries)))
    axes = np.atleast_2d(axes)
    for row, query in enumerate(queries.tolist()):
        cells = [(query, None)] + [(int(n), bool(ref_labels[n] == labels[query])) for n in neighbours[row]]
        for col, (index, correct) in enumerate(cells):
            ax = axes[row, col]
            image = images[index] if col == 0 else ref_images[index]
            ax.imshow(image if image.ndim == 2 else np.moveaxis(image, 0, -1), cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            color = "black" if correct is None else ("tab:green" if correct else "tab:red")
            for spine in ax.spines.values():
                spine.set_edgecolor(color)
                spine.set_linewidth(1.0 if correct is None else 3.0)
        axes[row, 0].set_ylabel(f"q{row}", rotation=0, labelpad=12)
    axes[0, 0].set_title("query", fontsize=9)
    for col in range(1, k + 1):
        axes[0, col].set_title(f"#{col}", fontsize=9)
    note = f"; last {n_fail} rows: queries whose nearest neighbour is wrong" if n_fail else ""
    fig.suptitle(title or f"top-{k} retrievals (green: same class, red: other class{note})")
    fig.tight_layout()
    return fig


def tsne_source(run_dir: str | os.PathLike, split, **drawing) -> str:
    """What a run's t-SNE map is drawn from, as a digest: the bytes of the run's checkpoint, the test
    split's images (or cache rows) and labels, ``drawing`` (the map's settings and title), the
    versions of scikit-learn and matplotlib and :data:`TSNE_DRAWING`."""
    import matplotlib
    import sklearn

    digest = hashlib.sha256(RunDir(run_dir).checkpoint.read_bytes())
    images = split.images if isinstance(split.images, np.ndarray) else np.asarray(split.rows)
    for array in (images, np.asarray(split.labels)):
        digest.update(repr((array.dtype.str, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    settings = sorted(drawing.items()) + [("sklearn", sklearn.__version__), ("matplotlib", matplotlib.__version__),
                                          ("drawing", TSNE_DRAWING)]
    digest.update(repr(settings).encode())
    return digest.hexdigest()[:32]


def _chunks(png: bytes):
    """(type, data, start, end) of each chunk of a PNG."""
    at = 8
    while at + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        yield kind, png[at + 8:at + 8 + length], at, at + 12 + length
        at += 12 + length


def png_source(png: bytes) -> str | None:
    """The source a PNG records under :data:`SOURCE_CHUNK` (None: it records none)."""
    for kind, data, _, _ in _chunks(png):
        if kind == b"tEXt" and data.startswith(SOURCE_CHUNK + b"\0"):
            return data[len(SOURCE_CHUNK) + 1:].decode("latin-1")
    return None


def with_source(png: bytes, source: str) -> bytes:
    """The PNG with a text chunk recording ``source`` just before its end chunk (one it had is replaced)."""
    kept = b"".join(png[start:end] for kind, data, start, end in _chunks(png)
                    if kind != b"IEND" and not (kind == b"tEXt" and data.startswith(SOURCE_CHUNK + b"\0")))
    body = b"tEXt" + SOURCE_CHUNK + b"\0" + source.encode("latin-1")
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    end = b"IEND"
    return png[:8] + kept + chunk + struct.pack(">I", 0) + end + struct.pack(">I", zlib.crc32(end))


def kept_or_marked(path: str | os.PathLike, png: bytes, source: str) -> bytes:
    """The bytes to save at ``path`` for a figure drawn from ``source``: the saved file when it records
    the same source (a redrawing differs only by floating-point noise), else ``png`` recording it."""
    path = Path(path)
    if path.is_file():
        saved = path.read_bytes()
        if png_source(saved) == source:
            return saved
    return with_source(png, source)
