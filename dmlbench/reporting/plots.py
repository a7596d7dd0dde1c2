"""Figures of a run: training curves, t-SNE of test embeddings, retrieval grids.

Each function returns a matplotlib Figure and leaves saving and showing to the caller.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from matplotlib import pyplot as plt
from matplotlib.figure import Figure

from ..evaluation.neighbours import knn


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
        points = TSNE(n_components=2, init="pca", learning_rate="auto", perplexity=perplexity,
                      random_state=seed).fit_transform(x[keep])
    fig, ax = plt.subplots(figsize=(6, 5))
    for c in np.unique(y):
        sel = y[keep] == c
        name = (class_names or {}).get(int(c), str(c))
        ax.scatter(points[sel, 0], points[sel, 1], s=6, alpha=0.7, label=f"{c}: {name}")
    ax.set(xticks=[], yticks=[], title=title or f"t-SNE of {len(keep)} test embeddings")
    if len(np.unique(y[keep])) <= 20:  # beyond that a legend hides the picture
        ax.legend(markerscale=3, fontsize=8, loc="best")
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
