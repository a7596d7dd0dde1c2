"""Pretraining glyph-resnet's trunk by classification on a fold's pretraining pool (``dmlbench pretrain``).

The field fine-tunes ImageNet backbones; here the pretraining step is reproduced in miniature: the trunk
of :class:`dmlbench.models.glyphnet.GlyphResNet` learns to classify the characters of fold ``k``'s
pretraining pool (:mod:`dmlbench.datasets.glyph_pool`: characters no fold evaluates, drawn only in
fold ``k``'s training typefaces), with a linear classifier on its pooled features that is thrown away.

The recipe (:class:`Recipe`) is recorded with the weights: seed, thread count, epochs, batch size,
SGD with Nesterov momentum and a per-step cosine schedule, weight decay, label smoothing and the
grey-image augmentation of the study's runs. One rendering of each character (its last face) is held
out to measure top-1 accuracy, the number by which the recipe is judged per CPU-minute. Training is
deterministic for a recipe at a given thread count: the same recipe and pool give the same weights
(``state_sha256``, a hash of the tensors, is recorded to check it).

Each fold's weights go to ``pretrained/<name>/fold<k>.pt`` and a line of ``manifest.json`` beside them
(recipe, pool key and content hash, accuracy, seconds, sha256 of the file and of the tensors). A fold whose
file exists with the same recipe and pool is not retrained: a fresh clone uses the shipped weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..fileio import atomic_write_bytes
from ..models.glyphnet import glyph_trunk, pretrained_root
from .augment import Augmenter

log = logging.getLogger("dmlbench")


@dataclass(frozen=True)
class Recipe:
    widths: tuple[int, int, int] = (32, 64, 128)
    epochs: int = 16
    batch_size: int = 256
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: dict = field(default_factory=lambda: {"rotate": 6.0, "scale": 0.08, "shift": 0.04, "stroke": 0.3})
    seed: int = 0
    threads: int = 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def held_out_rows(labels: np.ndarray) -> np.ndarray:
    """A boolean mask: the last rendering of each character (held out to measure accuracy)."""
    last = np.zeros(len(labels), bool)
    _, first_from_end = np.unique(labels[::-1], return_index=True)
    last[len(labels) - 1 - first_from_end] = True
    return last


def state_sha256(state: dict) -> str:
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _tensors(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - mean) / std).unsqueeze(1)


def _accuracy(trunk, classifier, images: torch.Tensor, targets: torch.Tensor) -> float:
    trunk.eval()
    with torch.no_grad():
        hits = sum(int((classifier(trunk(images[i:i + 1000])).argmax(1) == targets[i:i + 1000]).sum())
                   for i in range(0, len(images), 1000))
    trunk.train()
    return hits / max(len(images), 1)


def pretrain(arrays: dict, recipe: Recipe) -> dict:
    """Train the trunk on a pool's arrays (images, labels); returns {"trunk": state dict, "normalization",
    "accuracy" (top-1 on the held-out renderings), "seconds", "images_seen"}."""
    torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    classes, targets = np.unique(arrays["labels"], return_inverse=True)
    held = held_out_rows(arrays["labels"])
    pixels = arrays["images"][~held].astype(np.float64) / 255.0
    mean, std = float(pixels.mean()), float(pixels.std())
    train_x, train_y = _tensors(arrays["images"][~held], mean, std), torch.from_numpy(targets[~held])
    test_x, test_y = _tensors(arrays["images"][held], mean, std), torch.from_numpy(targets[held])
    trunk = glyph_trunk(recipe.widths)
    classifier = torch.nn.Linear(recipe.widths[-1], len(classes))
    parameters = list(trunk.parameters()) + list(classifier.parameters())
    optimizer = torch.optim.SGD(parameters, lr=recipe.lr, momentum=recipe.momentum, nesterov=True,
                                weight_decay=recipe.weight_decay)
    augmenter = Augmenter(recipe.augment, recipe.seed)
    generator = torch.Generator().manual_seed(recipe.seed)
    per_epoch = len(train_x) // recipe.batch_size
    total, start = recipe.epochs * per_epoch, time.perf_counter()
    for epoch in range(recipe.epochs):
        order = torch.randperm(len(train_x), generator=generator)
        for step in range(per_epoch):
            for group in optimizer.param_groups:
                group["lr"] = recipe.lr * 0.5 * (1 + np.cos(np.pi * (epoch * per_epoch + step) / total))
            rows = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            logits = classifier(trunk(augmenter(train_x[rows])))
            loss = F.cross_entropy(logits, train_y[rows], label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        log.info("pretraining epoch %d/%d: loss %.3f (%.0f s)", epoch + 1, recipe.epochs, float(loss.detach()),
                 time.perf_counter() - start)
    seconds = time.perf_counter() - start
    return {"trunk": {k: v.detach().clone() for k, v in trunk.state_dict().items()}, "normalization": [mean, std],
            "accuracy": _accuracy(trunk, classifier, test_x, test_y), "seconds": seconds,
            "images_seen": total * recipe.batch_size, "classes": int(len(classes))}


def verify_folds(folds, name: str = "han-typefaces", out=print) -> int:
    """Retrain each fold's backbone by its shipped recipe (at the thread count it records) and compare the
    tensors' sha256 with the shipped one: 0 when every fold reproduces, else 1."""
    from ..datasets.glyph_pool import load_pool

    manifest_path = pretrained_root() / name / "manifest.json"
    shipped = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    status = 0
    for fold in folds:
        entry = shipped.get(f"fold{fold}")
        if entry is None:
            out(f"fold {fold}: no shipped weights in {manifest_path}; run 'dmlbench pretrain' first")
            status = 1
            continue
        recipe = entry["recipe"] | {"widths": tuple(entry["recipe"]["widths"])}
        made = pretrain(load_pool(fold)["arrays"], Recipe(**recipe))
        same = state_sha256(made["trunk"]) == entry["state_sha256"]
        status |= not same
        out(f"fold {fold}: retrained in {made['seconds'] / 60:.1f} min; tensors sha256 "
            f"{state_sha256(made['trunk'])[:12]} {'==' if same else '!='} shipped {entry['state_sha256'][:12]}")
    return status


def save_backbone(folder: Path, fold: int, made: dict, recipe: Recipe, pool_facts: dict) -> dict:
    """Write fold<k>.pt and its manifest entry; returns the entry."""
    import io

    buffer = io.BytesIO()
    torch.save({"trunk": made["trunk"], "widths": list(recipe.widths), "normalization": made["normalization"],
                "recipe": recipe.to_json()}, buffer)
    atomic_write_bytes(folder / f"fold{fold}.pt", buffer.getvalue())
    entry = {"recipe": json.loads(recipe.to_json()), "pool_key": pool_facts["key"],
             "pool_content": pool_facts["content"], "pool_characters": made["classes"],
             "pool_typefaces": pool_facts["typefaces"], "accuracy": made["accuracy"],
             "seconds": round(made["seconds"], 1), "images_seen": made["images_seen"],
             "parameters": sum(v.numel() for k, v in made["trunk"].items() if "running" not in k
                               and "num_batches" not in k),
             "file_sha256": hashlib.sha256(buffer.getvalue()).hexdigest(), "state_sha256": state_sha256(made["trunk"])}
    manifest_path = folder / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest[f"fold{fold}"] = entry
    atomic_write_bytes(manifest_path, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())
    return entry


def current(folder: Path, fold: int, recipe: Recipe, pool_facts: dict) -> bool:
    """Whether fold ``fold``'s shipped weights were made by ``recipe`` from this pool (then not retrained)."""
    manifest_path = folder / "manifest.json"
    if not (folder / f"fold{fold}.pt").is_file() or not manifest_path.is_file():
        return False
    entry = json.loads(manifest_path.read_text()).get(f"fold{fold}", {})
    made = hashlib.sha256((folder / f"fold{fold}.pt").read_bytes()).hexdigest()
    return (entry.get("recipe") == json.loads(recipe.to_json()) and entry.get("pool_content") == pool_facts["content"]
            and entry.get("file_sha256") == made)


def pretrain_folds(folds, name: str = "han-typefaces", recipe: Recipe = Recipe(), force: bool = False,
                   out=print) -> dict:
    """``make pretrain``: each fold's backbone, trained unless current; returns {fold: manifest entry}."""
    from ..datasets.glyph_pool import load_pool

    folder = pretrained_root() / name
    folder.mkdir(parents=True, exist_ok=True)
    done = {}
    for fold in folds:
        pool = load_pool(fold)
        if not force and current(folder, fold, recipe, pool["facts"]):
            done[fold] = json.loads((folder / "manifest.json").read_text())[f"fold{fold}"]
            out(f"fold {fold}: current ({folder / f'fold{fold}.pt'}, sha256 {done[fold]['file_sha256'][:12]})")
            continue
        made = pretrain(pool["arrays"], recipe)
        done[fold] = save_backbone(folder, fold, made, recipe, pool["facts"])
        out(f"fold {fold}: pretrained on {made['classes']} characters x {len(pool['facts']['typefaces'])} typefaces "
            f"in {made['seconds'] / 60:.1f} min; held-out top-1 {made['accuracy']:.3f}; "
            f"sha256 {done[fold]['file_sha256'][:12]}")
    return done
