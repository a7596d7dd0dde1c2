"""Trivial baselines, scored exactly like the study's cells: what retrieval gets without metric learning.

- **raw pixels**: each image's normalised pixels (the network's input) as its embedding, one record per
  dataset and fold (no seed: nothing is random); in-memory grey datasets only (a photo's 150,528 pixel
  values are no embedding anyone serves);
- **untrained network**: the study's network at its random initialisation (the cell's seed), in eval
  mode, one record per dataset, fold and seed; for a pretrained network (one that declares
  ``weights_identity``, e.g. pretrained-glyphnet) the same architecture from scratch (glyph-resnet);
- **pretrained features**: for a pretrained network, its pretrained trunk's pooled features without any
  metric learning (the Reality Check's "pretrained, no training" row), one record per dataset and fold.

Both embed the validation and the test split and are scored by the same evaluation as a run's test
(:func:`dmlbench.evaluation.metrics.evaluate`: L2-normalised, exact neighbours, the dataset's Recall@K,
R-Precision, MAP@R, NMI) and the validation metrics (``val_map@r``, ``val_r_precision``,
``val_recall@1``). A record lives in ``<results>/baselines/<baseline id>.json``; the id hashes everything
that decides its numbers (kind, dataset and its version, fold, and for the network its settings and
seed, the evaluation protocol), so a finished record is never recomputed and a changed one is a new file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import EVALUATION_PROTOCOL, RunConfig
from ..fileio import atomic_write_json, read_json

BASELINES = ("raw pixels", "untrained network", "pretrained features")
# the architecture a pretrained network is built from, trained from scratch: its "untrained network"
FROM_SCRATCH = {"pretrained-glyphnet": "glyph-resnet"}
# what an untrained network's numbers depend on (besides dataset, fold and seed)
NETWORK_SETTINGS = ("model", "model_kwargs", "embedding_dim", "precision", "image_size")


@dataclasses.dataclass(frozen=True)
class Baseline:
    """One baseline record to compute: its kind and the cell configuration it stands beside."""

    kind: str
    config: RunConfig

    def identity(self) -> dict[str, Any]:
        config = self.config
        identity = {"baseline": self.kind, "dataset": config.dataset, "fold": config.fold or 0,
                    "dataset_version": config.component_versions()["dataset"],
                    "evaluation_protocol": EVALUATION_PROTOCOL}
        if self.kind == "untrained network":
            identity |= {name: getattr(config, name) for name in NETWORK_SETTINGS} | {
                "seed": config.seed, "model_version": config.component_versions()["model"]}
        if self.kind == "pretrained features":
            identity |= {name: getattr(config, name) for name in NETWORK_SETTINGS if name != "embedding_dim"} | {
                "model_weights": config.hashed_dict()["model_weights"],
                "model_version": config.component_versions()["model"]}
        return identity

    @property
    def baseline_id(self) -> str:
        digest = hashlib.sha256(json.dumps(self.identity(), sort_keys=True, default=str).encode()).hexdigest()[:10]
        seed = f"__seed{self.config.seed}" if self.kind == "untrained network" else ""
        kind = self.kind.replace(" ", "-")
        return f"{self.config.dataset}__{kind}__fold{self.config.fold or 0}{seed}__{digest}"


def baselines_for(configs) -> list[Baseline]:
    """The baselines beside a study's cell configurations: raw pixels per (dataset, fold) of an in-memory
    dataset, the untrained network per (dataset, fold, seed, network settings); each once."""
    from ..datasets.benchmarks import PHOTO_DATASETS

    found: dict[str, Baseline] = {}
    for config in configs:
        pretrained = "model_weights" in config.hashed_dict()
        kinds = ("untrained network",) if config.dataset in PHOTO_DATASETS else ("raw pixels", "untrained network")
        for kind in kinds + (("pretrained features",) if pretrained else ()):
            beside = config
            if kind == "untrained network" and pretrained:  # the same architecture, from scratch
                beside = dataclasses.replace(config, model=FROM_SCRATCH.get(config.model, config.model),
                                             model_kwargs={k: v for k, v in config.model_kwargs.items()
                                                           if k not in ("weights", "fold")})
            baseline = Baseline(kind, beside)
            found.setdefault(baseline.baseline_id, baseline)
    return list(found.values())


def baselines_dir(results: str | Path) -> Path:
    return Path(results) / "baselines"


def _embeddings(baseline: Baseline, splits, part: str) -> "torch.Tensor":
    """The baseline's embeddings of one split ("val", "test" or "gallery"), fed as a run's test split is."""
    import torch

    from ..training.embed import batches_of_test_split
    from ..training.feeds import forward_embed, image_tensor
    from ..training.loop import build_model, seed_everything

    config = baseline.config
    if baseline.kind == "raw pixels":
        images = getattr(splits, part).images
        return image_tensor(images, splits.mean, splits.std, torch.device("cpu")).flatten(1).float()
    seed_everything(config.seed)  # the network a run of this seed starts from
    model = build_model(config).to(memory_format=torch.channels_last)
    if baseline.kind == "pretrained features":  # the trunk's pooled features, L2-normalised by evaluate
        model = torch.nn.Sequential(model.trunk)
    return forward_embed(model, batches_of_test_split(splits, model, config, torch.device("cpu"), part=part),
                         torch.device("cpu"), config.precision).cpu()


def compute(baseline: Baseline, splits=None) -> dict[str, Any]:
    """The baseline's record: validation and test metrics, scored as a run's."""
    import torch

    from ..evaluation.metrics import evaluate
    from ..training.loop import recall_ks

    started = time.time()
    splits = baseline.config.load_splits() if splits is None else splits
    ks = recall_ks(baseline.config.dataset)
    val = evaluate(_embeddings(baseline, splits, "val"), torch.from_numpy(splits.val.labels), ks=(1,), nmi=False)
    gallery = gallery_labels = None
    if splits.gallery is not None:
        gallery = _embeddings(baseline, splits, "gallery")
        gallery_labels = torch.from_numpy(splits.gallery.labels)
    test = evaluate(_embeddings(baseline, splits, "test"), torch.from_numpy(splits.test.labels), ks=ks,
                    gallery=gallery, gallery_labels=gallery_labels)
    return {"baseline_id": baseline.baseline_id, "kind": baseline.kind, "dataset": baseline.config.dataset,
            "fold": baseline.config.fold, "seed": baseline.config.seed if baseline.kind == "untrained network" else None,
            "identity": baseline.identity(), "val": {f"val_{k}": v for k, v in val.items()
                                                      if k in ("map@r", "r_precision", "recall@1")},
            "test": test, "wall_s": round(time.time() - started, 3)}


def ensure_baselines(configs, results: str | Path, log=print) -> dict[str, int]:
    """Every baseline beside ``configs`` recorded under ``results``/baselines: missing ones computed (the
    splits of a dataset and fold loaded once), finished ones left as they are."""
    folder = baselines_dir(results)
    counts = {"computed": 0, "done": 0}
    loaded: dict[tuple, Any] = {}
    for baseline in baselines_for(configs):
        path = folder / f"{baseline.baseline_id}.json"
        if path.is_file():
            counts["done"] += 1
            continue
        key = (baseline.config.dataset, baseline.config.fold, baseline.config.image_size)
        if key not in loaded:
            loaded = {key: baseline.config.load_splits()}  # one dataset's splits in memory at a time
        record = compute(baseline, loaded[key])
        atomic_write_json(path, record)
        counts["computed"] += 1
        log(f"{baseline.baseline_id}: test MAP@R {record['test']['map@r']:.4f}, validation MAP@R "
            f"{record['val']['val_map@r']:.4f} ({record['wall_s']:.1f} s)")
    return counts


def load_baselines(results: str | Path) -> pd.DataFrame:
    """One row per baseline record under ``results``/baselines: dataset, baseline, fold, seed, the test
    metrics (as the runs table names them) and val_map@r, val_r_precision, val_recall@1."""
    rows = []
    for path in sorted(baselines_dir(results).glob("*.json")):
        try:
            record = read_json(path)
            rows.append({"baseline_id": record["baseline_id"], "dataset": record["dataset"],
                         "baseline": record["kind"], "fold": record["fold"], "seed": record["seed"],
                         **{k: v for k, v in record["test"].items() if isinstance(v, (int, float))},
                         **record["val"]})
        except (OSError, ValueError, KeyError, TypeError):  # a damaged record is left out, not a crash
            continue
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["baseline_id", "dataset", "baseline", "fold", "seed", "map@r", "r_precision",
                                     "recall@1", "val_map@r", "val_r_precision", "val_recall@1"])
    return frame.astype({"fold": "float64"}) if frame["fold"].isna().any() else frame

