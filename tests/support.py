"""What the tests share: tiny datasets written as real files, settings for tiny runs, loss and miner
oracles (plain loops over a batch), miniature benchmark layouts, and user modules for notebook kernels.

The fixtures that use these live in conftest.py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.io import savemat

from dmlbench.datasets.idx import write_idx
from dmlbench.geometry.tuples import Pairs, Triplets

REPO = Path(__file__).resolve().parents[1]


TRAIN_PER_CLASS = 40
TEST_PER_CLASS = 20


def make_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    images = rng.integers(0, 60, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        row = 2 + 2 * int(c)
        images[i, row:row + 3, 4:24] = 220
        if c % 2:
            images[i, 4:24, 14:16] = 180
    return images


def write_fashion_mnist(directory, train_per_class=TRAIN_PER_CLASS, test_per_class=TEST_PER_CLASS, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), per_class))
        write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", make_images(labels, rng))
        write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


def tiny_settings(**overrides):
    """RunConfig settings small enough for a run to take seconds on the CPU."""
    settings = dict(model_kwargs={"channels": [4, 8, 8]}, embedding_dim=8, P=5, K=4, epochs=2, iters_per_epoch=3,
                    lr=1e-3, eval_batch_size=256)
    settings.update(overrides)
    return settings


# Each writer writes a miniature's lists in the official form and returns (path, label) of every image
# it lists, where the official archive puts it (write_miniature then writes the images there).

def write_cub(root, per_class=2):
    (root / "images").mkdir(parents=True)
    images, labels, classes, listed = [], [], [], []
    image_id = 1
    for c in range(1, 201):
        classes.append(f"{c} {c:03d}.Bird_{c}")
        for j in range(per_class):
            images.append(f"{image_id} {c:03d}.Bird_{c}/bird_{c}_{j}.jpg")
            labels.append(f"{image_id} {c}")
            listed.append((f"images/{c:03d}.Bird_{c}/bird_{c}_{j}.jpg", c))
            image_id += 1
    (root / "images.txt").write_text("\n".join(images) + "\n")
    (root / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return listed


def cars_records(fields, rows):
    """A MATLAB struct array as scipy.io.savemat writes the official files' (one record per row)."""
    records = np.zeros(len(rows), dtype=[(f, "O") for f in fields])
    for i, row in enumerate(rows):
        records[i] = row
    return records


def write_cars(root):
    root.mkdir(parents=True, exist_ok=True)
    rows = [(f"car_ims/{i + 1:06d}.jpg", 0, 0, 0, 0, i // 2 + 1, i % 2) for i in range(196 * 2)]
    fields = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
    names = np.array([f"Make {c} 2012" for c in range(1, 197)], dtype=object)
    savemat(root / "cars_annos.mat", {"annotations": cars_records(fields, rows), "class_names": names})
    return [(row[0], row[5]) for row in rows]


def write_sop(root):
    root.mkdir(parents=True, exist_ok=True)
    header = "image_id class_id super_class_id path\n"
    train = [f"{i + 1} {i // 3 + 1} {i // 9 + 1} bicycle_final/{i}_0.JPG" for i in range(30)]  # classes 1-10
    test = [f"{i + 1} {i // 2 + 11} {i // 4 + 5} chair_final/{i}_0.JPG" for i in range(10)]  # classes 11-15
    (root / "Ebay_train.txt").write_text(header + "\n".join(train) + "\n")
    (root / "Ebay_test.txt").write_text(header + "\n".join(test) + "\n")
    return [(line.split()[3], int(line.split()[1])) for line in train + test]


def inshop_lines():
    """(image as listed, item, status) of the In-Shop miniature: 12 items of three views each."""
    lines = []
    for item in range(1, 13):
        category = "WOMEN/Dresses" if item % 2 else "MEN/Denim"
        for view in ("front", "side", "back"):
            status = "train" if item <= 8 else ("query" if view == "front" else "gallery")
            lines.append((f"img/{category}/id_{item:08d}/01_1_{view}.jpg", f"id_{item:08d}", status))
    return lines


def write_inshop(root):
    (root / "Eval").mkdir(parents=True)
    lines = inshop_lines()
    (root / "Eval" / "list_eval_partition.txt").write_text(f"{len(lines)}\nimage_name item_id evaluation_status\n"
                                                           + "\n".join(" ".join(line) for line in lines) + "\n")
    return [(image, int(item[3:])) for image, item, _ in lines]


def miniature_counts():
    """Each miniature's own image and class counts, carried as the dataset classes carry the published ones."""
    from dmlbench.datasets.counts import Counts

    return {"cub": Counts(400, 200, 200, 100, 100), "cars196": Counts(392, 196, 196, 98, 98),
            "sop": Counts(40, 30, 10, 10, 5), "inshop": Counts(36, 24, 4, 8, 4, 8, 4)}


def user_module(tmp_path, monkeypatch, filename, source):
    """A module of the user's own, importable here and in the notebook kernels papermill starts."""
    module_dir = tmp_path / "user"
    module_dir.mkdir(exist_ok=True)
    (module_dir / filename).write_text(source)
    monkeypatch.syspath_prepend(str(module_dir))
    monkeypatch.setenv("PYTHONPATH", str(module_dir), prepend=os.pathsep)


BROKEN_LOSS = '''
from dmlbench.losses import TripletMarginLoss


class Broken(TripletMarginLoss):
    """A triplet loss that fails on its first batch."""

    def terms(self, embeddings, labels, tuples):
        raise RuntimeError("planted failure")
'''


VALUE_RTOL, VALUE_ATOL = 1e-5, 1e-6  # a loss value against its reference, in every loss test


def batch(n=24, dim=16, classes=5, seed=0, dtype=torch.float32):
    """``(n, dim)`` raw embeddings drawn in ``dtype`` and ``(n,)`` labels in ``0..classes-1``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randint(0, classes, (n,), generator=g)


def batch_with_weights(n=24, dim=16, classes=6, seed=0, dtype=torch.float32, present=None, opposite=0,
                       weight_scale=1.0):
    """Raw embeddings, labels and raw ``(classes, dim)`` class vectors (weights, proxies or centres).

    Everything is drawn in float64 and then cast to ``dtype``, so the float32 and float64 batches of a
    seed hold the same numbers up to rounding. ``present``: labels come from the first ``present``
    classes only (all by default). ``opposite``: the first ``opposite`` embeddings point almost away
    from their class vector (an angle close to pi). ``weight_scale`` multiplies the class vectors.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    labels = torch.randint(0, present or classes, (n,), generator=g)
    weights = torch.randn(classes, dim, generator=g, dtype=torch.float64)
    for i in range(opposite):
        w = weights[labels[i]]
        x[i] = -w + 0.15 * torch.linalg.vector_norm(w) * torch.randn(dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    return x.to(dtype), labels, weights.to(dtype) * weight_scale


def value_and_grad(fn, embeddings):
    """``fn(x)`` (detached) and its gradient with respect to ``x``, a fresh leaf copy of ``embeddings``."""
    x = embeddings.clone().requires_grad_(True)
    value = fn(x)
    value.backward()
    return value.detach(), x.grad


def value_and_grads(fn, embeddings, *params):
    """``fn(x)`` (detached), its gradient with respect to ``x`` (a fresh leaf copy of ``embeddings``)
    and a copy of its gradient with respect to each of ``params`` (learnt proxies, class weights...),
    whose earlier gradients are dropped first."""
    x = embeddings.clone().requires_grad_(True)
    for p in params:
        p.grad = None
    value = fn(x)
    value.backward()
    return (value.detach(), x.grad, *(p.grad.clone() for p in params))


def assert_same_value_and_grad(ours, reference, embeddings, *, grad_rtol=1e-5, grad_atol=1e-6,
                               relative_grad_atol=False, nonzero=False):
    """``ours(x)`` and ``reference(x)`` agree in value (rtol 1e-5, atol 1e-6) and in their gradient with
    respect to the raw embeddings (``grad_rtol``, ``grad_atol``).

    ``relative_grad_atol``: the gradients' atol is ``grad_atol`` times the largest reference gradient,
    for losses whose float32 rounding grows with the gradients' size (e.g. under reduction="sum").
    ``nonzero``: also require a positive value and a gradient that is not all zero, so that the
    comparison is not between two zeros. Returns our value and gradient.
    """
    value, grad = value_and_grad(ours, embeddings)
    ref_value, ref_grad = value_and_grad(reference, embeddings)
    torch.testing.assert_close(value, ref_value, rtol=VALUE_RTOL, atol=VALUE_ATOL)
    atol = grad_atol * ref_grad.abs().max().item() if relative_grad_atol else grad_atol
    torch.testing.assert_close(grad, ref_grad, rtol=grad_rtol, atol=atol)
    if nonzero:
        assert value > 0 and grad.abs().sum() > 0
    return value, grad


def assert_same_value_and_grads(ours, reference, embeddings, params, ref_params, *, transposed=False):
    """Value, embedding gradient and parameter gradients of ``ours`` and ``reference`` agree (rtol 1e-5,
    atol 1e-6), ``params[k]`` against ``ref_params[k]`` (a single parameter may be given bare).

    ``transposed``: the reference stores its parameters transposed (pytorch-metric-learning keeps
    class weights ``W`` as ``(dim, classes)``), so their gradients are compared through ``.T``.
    Returns our value, embedding gradient and parameter gradients.
    """
    params = (params,) if isinstance(params, torch.Tensor) else tuple(params)
    ref_params = (ref_params,) if isinstance(ref_params, torch.Tensor) else tuple(ref_params)
    assert len(params) == len(ref_params)
    value, grad, *param_grads = value_and_grads(ours, embeddings, *params)
    ref_value, ref_grad, *ref_param_grads = value_and_grads(reference, embeddings, *ref_params)
    torch.testing.assert_close(value, ref_value, rtol=VALUE_RTOL, atol=VALUE_ATOL)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-6)
    for ours_grad, ref_param_grad in zip(param_grads, ref_param_grads):
        torch.testing.assert_close(ours_grad, ref_param_grad.T if transposed else ref_param_grad, rtol=1e-5, atol=1e-6)
    return (value, grad, *param_grads)


def as_tuple(tuples):
    """pytorch-metric-learning's indices tuple for mined ``Pairs`` (pos_a, pos_b, neg_a, neg_b) or
    ``Triplets`` (anchor, positive, negative)."""
    if isinstance(tuples, Triplets):
        return tuples.anchor, tuples.positive, tuples.negative
    return tuples.pos_a, tuples.pos_b, tuples.neg_a, tuples.neg_b


def shuffled_subset(pairs, keep, seed):
    """A miner-like choice: a random ``keep`` fraction of the positive and of the negative pairs (at
    least one of each), in random order, with the first five chosen negative pairs repeated."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.randperm(len(pairs.pos_a), generator=g)[: max(1, int(keep * len(pairs.pos_a)))]
    neg = torch.randperm(len(pairs.neg_a), generator=g)[: max(1, int(keep * len(pairs.neg_a)))]
    neg = torch.cat([neg, neg[:5]])
    return Pairs(pairs.pos_a[pos], pairs.pos_b[pos], pairs.neg_a[neg], pairs.neg_b[neg])


WRITERS = {"cub": write_cub, "cars196": write_cars, "sop": write_sop, "inshop": write_inshop}
FOLDERS = {"cub": "CUB_200_2011", "cars196": "cars196", "sop": "Stanford_Online_Products", "inshop": "inshop"}


def write_images(root, paths, labels, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for path, label in zip(paths, labels):
        h, w = int(rng.integers(24, 40)), int(rng.integers(24, 40))
        colour = np.array([(37 * label) % 256, (91 * label) % 256, (53 * label) % 256], dtype=np.int64)
        pixels = np.clip(colour + rng.integers(-40, 40, size=(h, w, 3)), 0, 255).astype(np.uint8)
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target, quality=90)


def write_miniature(name: str, parent) -> "Path":  # noqa: F821
    """Write dataset ``name``'s miniature layout and images under ``parent / FOLDERS[name]``."""
    root = parent / FOLDERS[name]
    listed = WRITERS[name](root)
    write_images(root, [p for p, _ in listed], [label for _, label in listed])
    return root
