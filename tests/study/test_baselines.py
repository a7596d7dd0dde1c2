"""Baselines scored as the cells (dmlbench.study.baselines), on the embedded Fashion-MNIST files."""

import dataclasses

import numpy as np
import torch

from dmlbench.config import RunConfig
from dmlbench.evaluation.metrics import evaluate
from dmlbench.study.baselines import Baseline, baselines_for, ensure_baselines, load_baselines

CONFIG = RunConfig(dataset="fashion-mnist", loss="triplet", miner="semi-hard", model="convnet",
                   model_kwargs={"channels": [8, 16, 16]}, embedding_dim=16, precision="fp32", seed=3)


def test_each_baseline_is_recorded_once_and_scored_like_a_run(tmp_path):
    configs = [CONFIG, dataclasses.replace(CONFIG, seed=4), dataclasses.replace(CONFIG, loss="contrastive")]
    wanted = baselines_for(configs)
    # raw pixels once (no seed), the untrained network once per seed (the loss changes neither)
    assert sorted(b.kind for b in wanted) == ["raw pixels", "untrained network", "untrained network"]
    logged = []
    assert ensure_baselines(configs, tmp_path, log=logged.append) == {"computed": 3, "done": 0}
    assert ensure_baselines(configs, tmp_path, log=logged.append) == {"computed": 0, "done": 3}  # never redone
    table = load_baselines(tmp_path)
    assert len(table) == 3 and set(table["baseline"]) == {"raw pixels", "untrained network"}
    assert table["map@r"].between(0, 1).all() and table["val_map@r"].between(0, 1).all()

    # raw pixels: the normalised pixels as the embedding, scored by the study's evaluation
    splits = CONFIG.load_splits()
    pixels = (splits.test.images.astype(np.float32) / 255.0 - splits.mean) / splits.std
    expected = evaluate(torch.from_numpy(pixels.reshape(len(pixels), -1)), torch.from_numpy(splits.test.labels),
                        ks=(1, 2, 4, 8, 16, 32))
    row = table[table["baseline"] == "raw pixels"].iloc[0]
    assert abs(row["map@r"] - expected["map@r"]) < 1e-6 and abs(row["recall@1"] - expected["recall@1"]) < 1e-6
    # the untrained network differs by seed (its initialisation), and scores far from a trained one's ceiling
    nets = table[table["baseline"] == "untrained network"].set_index("seed")
    assert nets.loc[3, "map@r"] != nets.loc[4, "map@r"]


def test_a_baseline_id_changes_exactly_with_what_decides_its_numbers():
    pixels, net = Baseline("raw pixels", CONFIG), Baseline("untrained network", CONFIG)
    wider = dataclasses.replace(CONFIG, model_kwargs={"channels": [8, 16, 32]})
    assert Baseline("raw pixels", wider).baseline_id == pixels.baseline_id
    assert Baseline("untrained network", wider).baseline_id != net.baseline_id
    assert Baseline("untrained network", dataclasses.replace(CONFIG, loss="contrastive", lr=0.1)).baseline_id \
        == net.baseline_id
    assert Baseline("untrained network", dataclasses.replace(CONFIG, seed=5)).baseline_id != net.baseline_id
