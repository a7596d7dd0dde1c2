"""The pretraining pool: characters no fold evaluates, drawn only in each fold's training typefaces
(built small from the real Debian font packages, as tests/datasets/test_typefaces.py builds the benchmark)."""

import dataclasses

import numpy as np
import pytest

from dmlbench.datasets.glyph_pool import PoolSpec, build_pools, content_hash, evaluated_characters
from dmlbench.datasets.typefaces import GROUPS, build_folds
from dmlbench.errors import DatasetNotFoundError

from .test_typefaces import SMALL

POOL = PoolSpec(characters=12, min_renderings=2)


@pytest.fixture(scope="module")
def benchmark():
    return build_folds(SMALL)


@pytest.fixture(scope="module")
def pools(benchmark):
    return build_pools(SMALL, POOL, benchmark)


def test_pool_characters_are_disjoint_from_every_evaluated_character_of_every_fold(benchmark, pools):
    evaluated = evaluated_characters(benchmark)
    assert len(evaluated) == sum(SMALL.split_characters)  # the benchmark's pool, the same in every fold
    for fold, pool in pools.items():
        characters = set(np.unique(pool["arrays"]["labels"]).tolist())
        assert len(characters) == POOL.characters
        assert not characters & evaluated, f"fold {fold} pretrains on evaluated characters"
        for built in benchmark.values():
            for part in ("train", "val", "test"):
                assert not characters & set(built["arrays"][f"{part}_labels"].tolist())


def test_each_fold_sees_only_its_training_typefaces(benchmark, pools):
    for fold, pool in pools.items():
        groups = [face["group"] for face in benchmark[fold]["facts"]["faces"]]
        used = set(pool["arrays"]["faces"].tolist())
        assert {groups[i] for i in used} == {"train"}
        held_out = {i for i, g in enumerate(groups) if g in GROUPS[1:]}
        assert not used & held_out
        keys = [face["file"].rsplit("/", 1)[-1] + f"#{face['index']}" for face in benchmark[fold]["facts"]["faces"]]
        assert pool["facts"]["typefaces"] == [k for k, g in zip(keys, groups) if g == "train"]
        labels, counts = np.unique(pool["arrays"]["labels"], return_counts=True)
        assert counts.min() >= POOL.min_renderings


def test_the_same_characters_in_every_fold_and_the_build_is_deterministic(benchmark, pools):
    characters = [set(np.unique(p["arrays"]["labels"]).tolist()) for p in pools.values()]
    assert all(c == characters[0] for c in characters)
    again = build_pools(SMALL, POOL, benchmark)
    assert [content_hash(p["arrays"]) for p in again.values()] == [content_hash(p["arrays"]) for p in pools.values()]
    reseeded = build_pools(SMALL, dataclasses.replace(POOL, seed=1), benchmark)
    assert set(np.unique(reseeded[0]["arrays"]["labels"]).tolist()) != characters[0]


def test_asking_too_much_fails_clearly(benchmark):
    with pytest.raises(DatasetNotFoundError, match="pretraining pool: only"):
        build_pools(SMALL, PoolSpec(characters=10**6, min_renderings=2), benchmark)
    with pytest.raises(ValueError, match="min_renderings"):
        PoolSpec(min_renderings=1).validate()
