"""A rebuilt report's t-SNE maps keep their bytes: t-SNE magnifies the last bits of its input (the
same checkpoint embedded on another processor), so a map records what it was drawn from and a rebuild
keeps a map whose source is the same; one whose source changed is drawn again."""

import numpy as np
import torch

from dmlbench.datasets.base import ImageSet
from dmlbench.reporting import figures as fg
from dmlbench.reporting.plots import png_source, tsne_figure, tsne_source


def blobs(seed: int = 0, n: int = 240, classes: int = 6, dim: int = 16):
    """Gaussian blobs, one per class: (embeddings, labels)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n // classes)
    centres = rng.normal(size=(classes, dim)) * 3
    return torch.tensor(centres[labels] + rng.normal(size=(n, dim)), dtype=torch.float32), torch.tensor(labels)


def drawn(embeddings, labels, folder, source=None):
    figure = tsne_figure(embeddings, labels, max_points=200, seed=0, title="blobs")
    path = fg.save_figure(figure, "tsne_blobs", folder, show=False, drawn_from=source)
    return path.read_bytes()


def test_a_map_of_the_same_source_keeps_its_bytes_through_rounding_noise(tmp_path):
    embeddings, labels = blobs()
    noisy = embeddings * (1 + 1e-6 * torch.from_numpy(np.random.default_rng(1).standard_normal(embeddings.shape)).float())
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    first = drawn(embeddings, labels, tmp_path, "run-a")
    assert drawn(noisy, labels, fresh, "run-a") != first  # the noise moves the map: what a rebuild elsewhere met
    assert drawn(noisy, labels, tmp_path, "run-a") == first  # the rebuild keeps the saved map
    assert png_source(first) == "run-a"
    redrawn = drawn(noisy, labels, tmp_path, "run-b")  # another source: drawn again, recording it
    assert redrawn != first and png_source(redrawn) == "run-b"


def test_a_map_is_the_same_for_any_thread_count(tmp_path):
    embeddings, labels = blobs(2)
    before = torch.get_num_threads()
    pictures = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            pictures.append(drawn(embeddings, labels, tmp_path))
            (tmp_path / "tsne_blobs.png").unlink()
    finally:
        torch.set_num_threads(before)
    assert pictures[0] == pictures[1]


def test_the_source_names_the_checkpoint_the_split_and_the_drawing(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"weights")
    split = ImageSet(np.zeros((4, 2, 2), np.uint8), np.arange(4))
    source = tsne_source(tmp_path, split, seed=0, title="t")
    assert source == tsne_source(tmp_path, split, seed=0, title="t")
    assert source != tsne_source(tmp_path, split, seed=1, title="t")
    assert source != tsne_source(tmp_path, ImageSet(np.ones((4, 2, 2), np.uint8), np.arange(4)), seed=0, title="t")
    (tmp_path / "checkpoint.pt").write_bytes(b"other weights")
    assert source != tsne_source(tmp_path, split, seed=0, title="t")
