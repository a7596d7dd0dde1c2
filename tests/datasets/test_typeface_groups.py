"""The protocol of the shipped han-typefaces builds (the default spec, every fold, as 'make data' renders them
from the installed Debian font packages): three typeface groups and three character splits, apart."""

import dataclasses

import numpy as np

from dmlbench.datasets.typefaces import GROUPS, STYLE_FAMILIES, BuildSpec, load_build, spread_families

from .test_typefaces import check_protocol

SPEC = BuildSpec()


def builds() -> list[dict]:
    return [load_build(dataclasses.replace(SPEC, fold=fold))[0] for fold in range(SPEC.folds)]


def test_every_fold_of_the_default_build_keeps_characters_and_typefaces_apart():
    made = builds()
    assert SPEC.folds >= 3
    for built in made:
        check_protocol(built, SPEC.split_characters)
        # every style family the fonts hold is in every group (each lies in at least three packages here)
        assert built["facts"]["spread_families"] == list(STYLE_FAMILIES)
        for part in GROUPS:  # the validation and test parts show at least min_held_out designs per character
            labels = built["arrays"][f"{part}_labels"]
            assert np.unique(labels, return_counts=True)[1].min() >= SPEC.min_held_out
    # the folds are independent draws: other test characters and other test typefaces
    tests = [set(b["arrays"]["test_labels"].tolist()) for b in made]
    groups = [tuple(f["group"] for f in b["facts"]["faces"]) for b in made]
    assert len({frozenset(t) for t in tests}) == len(made) and len(set(groups)) == len(made)
    assert max(len(tests[i] & tests[j]) for i in range(len(made)) for j in range(i)) < len(tests[0])


def test_the_families_spread_are_the_ones_three_packages_hold():
    built = builds()[0]
    faces = built["facts"]["faces"]
    packages = {family: {f["package"] for f in faces if f["family"] == family} for family in STYLE_FAMILIES}
    assert [f for f in STYLE_FAMILIES if len(packages[f]) >= 3] == built["facts"]["spread_families"]
    from dmlbench.datasets.typefaces import Face

    assert spread_families([Face(f["package"], f["version"], f["file"], f["index"], f["name"]) for f in faces]) \
        == built["facts"]["spread_families"]
