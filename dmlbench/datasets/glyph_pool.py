"""The pretraining pool of han-typefaces: characters that no fold ever evaluates, drawn in one fold's
training typefaces only, for pretraining a backbone as the field pretrains on ImageNet.

The benchmark (:mod:`dmlbench.datasets.typefaces`) uses a pool of ``sum(split_characters)`` characters,
the same in every fold, split per fold into training, validation and test characters, each part shown
in its own typeface group. The fonts cover several thousand more characters. The pretraining pool of a
fold is made of those others:

1. **Characters.** Candidates are the characters covered by at least ``min_typefaces`` kept faces that
   are *not* in the benchmark's pool (so not a training, validation or test character of any fold),
   visited in a seeded order; one enters when it keeps at least ``min_renderings`` distinct renderings
   (duplicates removed as in the benchmark) in the training group of *every* fold, until
   ``characters`` have entered. The characters are the same in every fold.
2. **Typefaces.** In fold ``k`` only the renderings by faces of fold ``k``'s training group are kept:
   pretraining never sees a validation or test typeface of the fold it serves.

One rendering pass makes every fold's pool; each is cached beside the benchmark's builds
(``$DMLBENCH_CACHE/han-typefaces/pool-<key>.npz``) under a key of the benchmark's fingerprint (spec,
font files, package versions) and :class:`PoolSpec`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from ..errors import DatasetNotFoundError
from ..fileio import atomic_write_bytes, read_or_set_aside
from .base import cache_dir
from .typefaces import (BuildSpec, HanTypefaces, _Faces, discover_faces, distinct_renderings, fingerprint,
                        install_command, load_build, progress, remove_duplicate_faces, typeface_groups, usable_faces)

log = logging.getLogger("dmlbench")
POOL_ARRAYS = ("images", "labels", "faces")


@dataclass(frozen=True)
class PoolSpec:
    """What decides a pretraining pool beyond the benchmark's own :class:`BuildSpec`."""

    characters: int = 3000
    min_renderings: int = 6  # distinct renderings in the training group of every fold
    seed: int = 0
    version: int = 1  # bump when what a pool holds changes

    def validate(self) -> "PoolSpec":
        if self.characters < 1 or self.min_renderings < 2:
            raise ValueError(f"a pretraining pool needs characters >= 1 and min_renderings >= 2, got "
                             f"{self.characters}, {self.min_renderings}")
        return self


def evaluated_characters(built_folds: dict[int, dict]) -> set[int]:
    """Every character a fold trains, validates or tests on, over all folds of the benchmark."""
    return {int(c) for built in built_folds.values() for part in ("train", "val", "test")
            for c in np.unique(built["arrays"][f"{part}_labels"])}


def choose_pool(spec: BuildSpec, pool: PoolSpec, kept: _Faces, groupings: list[list[int]], evaluated: set[int]
                ) -> tuple[list[int], list[np.ndarray], list[list[int]]]:
    """The pool's characters with their renderings and the face of each (see the module's docstring)."""
    counts = Counter(c for covered in kept.coverage for c in covered)
    candidates = sorted(c for c, n in counts.items() if n >= spec.min_typefaces and c not in evaluated)
    order = np.random.default_rng([spec.seed, pool.seed, 3]).permutation(len(candidates))
    chars, images, owners = [], [], []
    with progress(pool.characters, "rendering the pretraining pool", "character") as bar:
        for position in order:
            char = candidates[int(position)]
            rendered, who = distinct_renderings(spec, kept, char)
            if all(sum(groups[w] == 0 for w in who) >= pool.min_renderings for groups in groupings):
                chars.append(char)
                images.append(np.stack(rendered))
                owners.append(who)
                bar.update()
            if len(chars) == pool.characters:
                break
    if len(chars) < pool.characters:
        raise DatasetNotFoundError(
            f"han-typefaces pretraining pool: only {len(chars)} characters outside the benchmark's "
            f"{len(evaluated)} have {pool.min_renderings} distinct renderings in every fold's training "
            f"typefaces; {pool.characters} are asked for. Install the font packages "
            f"({install_command(spec.packages)}) or ask for fewer.")
    return chars, images, owners


def build_pools(spec: BuildSpec, pool: PoolSpec, built_folds: dict[int, dict], faces=None) -> dict[int, dict]:
    """Every fold's pretraining pool: {fold: {"arrays": images, labels (code points), faces (indices into the
    kept faces), "facts": ...}}, the characters disjoint from every character of ``built_folds``."""
    spec.validate()
    pool.validate()
    faces = discover_faces(spec.packages) if faces is None else faces
    kept = remove_duplicate_faces(spec, usable_faces(spec, faces))
    groupings = [typeface_groups(spec, kept.faces, fold) for fold in range(spec.folds)]
    evaluated = evaluated_characters(built_folds)
    chars, images, owners = choose_pool(spec, pool, kept, groupings, evaluated)
    pools = {}
    for fold, groups in enumerate(groupings):
        rows = [[j for j, w in enumerate(who) if groups[w] == 0] for who in owners]
        arrays = {"images": np.concatenate([imgs[r] for imgs, r in zip(images, rows)]),
                  "labels": np.concatenate([np.full(len(r), c, np.int64) for c, r in zip(chars, rows)]),
                  "faces": np.concatenate([np.asarray(who, np.int64)[r] for who, r in zip(owners, rows)])}
        facts = {"fold": fold, "characters": len(chars), "excluded": len(evaluated),
                 "typefaces": [kept.faces[i].key for i in range(len(kept.faces)) if groups[i] == 0],
                 "face_keys": [f.key for f in kept.faces], "spec": asdict(dataclasses.replace(spec, fold=fold)),
                 "pool": asdict(pool)}
        pools[fold] = {"arrays": arrays, "facts": facts}
    return pools


def pool_key(spec: BuildSpec, pool: PoolSpec, faces) -> str:
    """The cache key of the pools: the benchmark's fingerprint (fold 0) and the pool's spec."""
    text = json.dumps({"build": fingerprint(dataclasses.replace(spec, fold=0), faces), "pool": asdict(pool)},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _read_pool(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {"arrays": {name: data[name] for name in POOL_ARRAYS}, "facts": json.loads(str(data["facts"]))}


def content_hash(arrays: dict) -> str:
    """sha256 of a pool's arrays (images, labels, faces): what a pretrained backbone records it trained on."""
    digest = hashlib.sha256()
    for name in POOL_ARRAYS:
        digest.update(np.ascontiguousarray(arrays[name]).tobytes())
    return digest.hexdigest()


def load_pool(fold: int, spec: BuildSpec | None = None, pool: PoolSpec = PoolSpec(), cache: bool = True) -> dict:
    """Fold ``fold``'s pretraining pool, from the cache when current, else rendered (all folds) and cached.
    Its facts carry ``key`` (the cache key) and ``content`` (:func:`content_hash`)."""
    spec = HanTypefaces.spec if spec is None else spec
    if not 0 <= fold < spec.folds:
        raise DatasetNotFoundError(f"han-typefaces has folds 0..{spec.folds - 1}; got fold={fold!r}")
    faces = discover_faces(spec.packages)
    key = pool_key(spec, pool, faces)
    path = cache_dir() / "han-typefaces" / f"pool-{key}-fold{fold}.npz"
    made = read_or_set_aside(path, _read_pool, "han-typefaces pretraining pool", log) if cache and path.is_file() \
        else None
    if made is None:
        built = {k: load_build(dataclasses.replace(spec, fold=k), cache=cache)[0] for k in range(spec.folds)}
        log.info("rendering the pretraining pool of %d characters for %d folds", pool.characters, spec.folds)
        pools = build_pools(spec, pool, built, faces)
        for k, one in pools.items():
            if cache:
                buffer = io.BytesIO()
                np.savez_compressed(buffer, **one["arrays"], facts=np.array(json.dumps(one["facts"])))
                atomic_write_bytes(path.with_name(f"pool-{key}-fold{k}.npz"), buffer.getvalue())
        made = pools[fold]
    made["facts"] |= {"key": key, "content": content_hash(made["arrays"])}
    return made
