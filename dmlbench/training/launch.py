"""One run trained by several processes (one per GPU), launched by torchrun.

A run whose configuration sets ``processes: N`` (N > 1) is trained by
``torchrun --standalone --nproc-per-node N -m dmlbench.training.launch CONFIG RUN_DIR``; the experiment
notebook starts it through :func:`train_distributed` and goes on with the result as with
:func:`dmlbench.training.loop.train`. Each process joins the process group (NCCL on GPUs, gloo on the CPU),
takes its GPU from ``LOCAL_RANK``, and trains on its share of every batch; embeddings and labels are
gathered across processes before mining and the loss (dmlbench.training.distributed). Rank 0 alone validates,
saves the per-epoch state (so a killed launch resumes like a one-process run) and tests once; it
hands the result to the notebook in ``distributed_result.pt``.

It can also be started by hand on a node with N GPUs, e.g. from a Slurm job step::

    torchrun --standalone --nproc-per-node 4 -m dmlbench.training.launch results/runs/<id>/launch_config.json results/runs/<id>
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..config import RunConfig
from ..fileio import atomic_torch_save, atomic_write_json
from .rundir import RunDir

LOG_FILE = RunDir.LAUNCH_LOG  # read from here by the tests


def _result_state(result) -> dict:
    return {"model": result.model.state_dict(), "criterion": result.criterion.state_dict(),
            "history": result.history, "best_epoch": result.best_epoch, "test_metrics": result.test_metrics,
            "test_embeddings": result.test_embeddings, "test_labels": result.test_labels, "device": result.device,
            "train_time_s": result.train_time_s, "images_per_s": result.images_per_s, "extra": result.extra,
            "gallery_embeddings": result.gallery_embeddings, "gallery_labels": result.gallery_labels}


def main(argv: list[str] | None = None) -> int:
    from .loop import train

    config_file, run_dir = (argv if argv is not None else sys.argv[1:])[:2]
    config = RunConfig.from_dict(json.loads(Path(config_file).read_text()), where=config_file).validate()
    folder = RunDir(run_dir)
    cuda = torch.cuda.is_available() and config.device != "cpu"
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        if dist.get_world_size() != (config.processes or 1):
            raise RuntimeError(f"the run asks for processes={config.processes} but torchrun started "
                               f"{dist.get_world_size()}")
        if not cuda:  # the processes share the CPU's cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
        splits = config.load_splits()
        result = train(config, splits, progress=dist.get_rank() == 0, checkpoint=folder.resume)
        if result is not None:
            atomic_torch_save(folder.launch_result, _result_state(result))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def train_distributed(config: RunConfig, splits, run_dir: str | os.PathLike):
    """Train ``config`` with ``config.processes`` processes through torchrun and return rank 0's
    :class:`dmlbench.training.loop.TrainResult` (model and loss rebuilt in this process, on the CPU)."""
    from .loop import TrainResult, build_model, build_run_criterion

    folder = RunDir(run_dir)
    folder.path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder.launch_config, config.to_dict())
    folder.launch_result.unlink(missing_ok=True)  # an earlier launch's, if any
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={config.processes}",
               "-m", "dmlbench.training.launch", str(folder.launch_config), str(folder.path)]
    with open(folder.launch_log, "w") as log:  # every rank's output, kept for reading after a failure
        launched = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if launched.returncode != 0 or not folder.launch_result.is_file():
        output = folder.launch_log.read_text(errors="replace")
        raise RuntimeError(f"torchrun with {config.processes} processes failed (exit {launched.returncode}); "
                           f"{folder.launch_log} ends with:\n{output[-4000:]}")
    state = torch.load(folder.launch_result, map_location="cpu", weights_only=True)
    model = build_model(config)
    model.load_state_dict(state.pop("model"))
    criterion = build_run_criterion(config, num_classes=len(np.unique(splits.train.labels)))
    criterion.load_state_dict(state.pop("criterion"))
    folder.launch_result.unlink()
    return TrainResult(config=config, model=model.eval(), criterion=criterion, **state)


if __name__ == "__main__":
    sys.exit(main())
