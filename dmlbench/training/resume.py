"""Per-epoch training state, so that an interrupted run continues where it stopped.

At the end of every epoch (after validation) the training loop writes ``resume.pt`` in the run
folder, atomically: the model, the optimiser, the gradient scaler, the loss's parameters (proxies,
centres), the best epoch so far with its weights, the history, and every source of randomness the
next epochs draw from: the batch sampler's generator and the position of its stream, the miner's
generator, the per-image augmentation seeds of the photo feed, and torch's, numpy's and Python's
global generators. A run started again with the same configuration loads it and trains the
remaining epochs; on the CPU it ends with exactly the numbers of a run that was never interrupted.

The file belongs to one configuration (its hash is stored and checked) and is removed once the run's
metrics.json is written. Everything in it is tensors and plain values, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..fileio import atomic_torch_save
from .rundir import RunDir

RESUME_FILE = RunDir.RESUME  # the name, for the tests that write a resume file by hand
FORMAT = 1


def global_rng_state() -> dict[str, Any]:
    version, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"version": version, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["version"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def generators(module: torch.nn.Module) -> dict[str, torch.Generator]:
    """Every torch.Generator held by ``module`` or its submodules (a miner's), by attribute path."""
    found = {}
    for prefix, sub in module.named_modules():
        for name, value in vars(sub).items():
            if isinstance(value, torch.Generator):
                found[f"{prefix}.{name}" if prefix else name] = value
    return found


def save(path: str | os.PathLike, *, config_hash: str, epoch: int, model, criterion, optimizer, scaler, sampler, feed,
         history: list[dict], best: dict[str, Any], train_time: float, images_seen: int,
         resumed_at: list[int]) -> Path:
    """Write the state after ``epoch`` atomically (a crash while writing leaves the previous one)."""
    state = {
        "format": FORMAT, "config_hash": config_hash, "epoch": epoch,
        "model": model.state_dict(), "criterion": criterion.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(), "sampler": sampler.state_dict(), "feed": feed.state_dict(),
        "generators": {name: g.get_state() for name, g in generators(criterion).items()},
        "rng": global_rng_state(), "history": history, "best": best, "train_time": train_time,
        "images_seen": images_seen, "resumed_at": list(resumed_at),
    }
    atomic_torch_save(path, state)
    return Path(path)


def load(path: str | os.PathLike, config_hash: str) -> dict[str, Any] | None:
    """The saved state, or None when there is none. A state saved by another configuration is an
    error: its folder holds another run."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated file cannot come from our atomic writes, but say what it is
        raise ConfigError(f"{path}: cannot read the saved training state ({type(error).__name__}: {error}); "
                          f"delete it to start the run from its first epoch") from None
    if state.get("format") != FORMAT or state.get("config_hash") != config_hash:
        raise ConfigError(f"{path} was saved by another configuration (hash {str(state.get('config_hash'))[:10]}, "
                          f"this run's {config_hash[:10]}); delete it or use the run folder of that configuration")
    return state


def restore(state: dict[str, Any], *, model, criterion, optimizer, scaler, sampler, feed) -> None:
    """Put every component back as it was after the saved epoch."""
    model.load_state_dict(state["model"])
    criterion.load_state_dict(state["criterion"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    sampler.load_state_dict(state["sampler"])
    feed.load_state_dict(state["feed"])
    held = generators(criterion)
    missing = sorted(set(state["generators"]) ^ set(held))
    if missing:
        raise ConfigError(f"the saved training state's random generators ({', '.join(missing)}) do not match this "
                          f"run's criterion; the code changed since it was saved: delete {RunDir.RESUME}")
    for name, value in state["generators"].items():
        held[name].set_state(value)
    set_global_rng_state(state["rng"])
