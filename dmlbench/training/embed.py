"""A finished run's test embeddings again: its network reloaded from the run folder's checkpoint
(:attr:`dmlbench.training.rundir.RunDir.checkpoint`) and the test split embedded as the evaluation
embeds it (the evaluation transform and the network's normalisation for photos, the split's mean and
standard deviation for the small greyscale datasets).

The report uses it for the t-SNE maps and retrieval grids of its best and worst cells, the index
evaluation (:mod:`dmlbench.study.indexes`) for the embeddings it indexes.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import DamagedFileError
from .feeds import DEFAULT_IMAGE_SIZE, forward_embed, image_tensor
from .loop import build_model
from .rundir import RunDir, read_checkpoint

PHOTO_BATCH = 256  # photos are decoded and transformed this many at a time


def load_network(run_dir: str | os.PathLike, device: str = "cpu", checkpoint: str | os.PathLike | None = None
                 ) -> tuple[torch.nn.Module, RunConfig]:
    """The selected epoch's network of a finished run (in eval mode, on ``device``) and its settings,
    from the run folder's checkpoint or from the file ``checkpoint``. The file is checked and read as
    tensors, numbers and text only (:func:`dmlbench.training.rundir.read_checkpoint`): a damaged or
    planted one fails naming its path, and runs no code."""
    folder = RunDir(run_dir)
    if checkpoint is None:
        path, checkpoint = folder.checkpoint, folder.read_checkpoint(device)
    else:
        path, checkpoint = Path(checkpoint), read_checkpoint(checkpoint, device)
    config = RunConfig.from_record(checkpoint["config"], where=str(path))
    # the weights come from the checkpoint: no pretrained file is read
    model = build_model(config, **({"pretrained": False} if "pretrained" in config.model_kwargs else {}))
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError) as error:
        first = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
        raise DamagedFileError(f"{path}: its weights do not fit the network its settings build ({first})") from None
    return model.to(device).eval(), config


def batches_of_test_split(splits, model: torch.nn.Module, config: RunConfig, dev: torch.device, part: str = "test"):
    """The test split's images (or the gallery's: ``part="gallery"``), batch by batch, as the network
    is evaluated on them."""
    images = getattr(splits, part)
    if hasattr(images, "cache"):  # photos: the evaluation transform, the network's normalisation
        from ..datasets.transforms import eval_transform, normalize_batch

        transform = eval_transform(config.image_size or DEFAULT_IMAGE_SIZE, normalize=False)
        mean, std = getattr(model, "normalization", (splits.mean, splits.std))
        rows = images.rows
        return (normalize_batch(torch.stack([transform(images.cache[int(r)]) for r in rows[i:i + PHOTO_BATCH]]),
                                mean, std).to(dev) for i in range(0, len(images), PHOTO_BATCH))
    x = image_tensor(images.images, splits.mean, splits.std, dev)
    return (x[i:i + config.eval_batch_size] for i in range(0, len(x), config.eval_batch_size))


def embed_test_split(run_dir: str | os.PathLike, splits, device: str = "cpu", parts: tuple[str, ...] = ("test",)):
    """The test embeddings (and labels) of a finished run, recomputed from its checkpoint; with
    ``parts=("test", "gallery")``, a (embeddings, labels) pair per part, the network loaded once."""
    model, config = load_network(run_dir, device)
    dev = torch.device(device)
    out = [(forward_embed(model, batches_of_test_split(splits, model, config, dev, part), dev, config.precision).cpu(),
            torch.from_numpy(getattr(splits, part).labels)) for part in parts]
    return out[0] if parts == ("test",) else out
