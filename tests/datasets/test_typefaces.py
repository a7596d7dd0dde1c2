"""han-typefaces, built small from a few of the real Debian font packages that 'make data' installs."""

import dataclasses
import io
import json

import numpy as np
import pytest

from dmlbench.datasets import typefaces
from dmlbench.datasets.glyph_pool import PoolSpec, build_pools, content_hash, evaluated_characters
from dmlbench.datasets.typefaces import (GROUPS, BuildSpec, HanTypefaces, build_folds, counts, load_build,
                                         rendering_distance, style_family)
from dmlbench.errors import DatasetNotFoundError

# Noto CJK holds regional variants (JP, KR, SC, TC, HK, and Mono) of two designs per weight; IPA Gothic and
# IPA P Gothic share their Han glyphs: the duplicate removal must find both.
SMALL = BuildSpec(packages=("fonts-noto-cjk", "fonts-arphic-uming", "fonts-arphic-ukai", "fonts-wqy-zenhei",
                            "fonts-ipafont-gothic", "fonts-cwtex-kai", "fonts-lxgw-wenkai", "fonts-kiloji",
                            "fonts-unfonts-core", "fonts-wqy-microhei"),
                  min_typefaces=5, min_held_out=2, split_characters=(8, 3, 5), probe=30, folds=2)


@pytest.fixture(scope="module")
def folds():
    return build_folds(SMALL)


@pytest.fixture(scope="module")
def small(folds):
    return folds[0]


def check_protocol(built: dict, split_characters) -> None:
    """The protocol's promises for one fold's build: characters and typefaces of the three parts disjoint,
    whole packages per group, every spread family in every group, each part shown only in its group."""
    arrays, faces = built["arrays"], built["facts"]["faces"]
    chars = {part: set(arrays[f"{part}_labels"].tolist()) for part in GROUPS}
    assert [len(chars[p]) for p in GROUPS] == list(split_characters)
    assert not chars["train"] & chars["val"] and not chars["train"] & chars["test"] and not chars["val"] & chars["test"]
    shown = {part: set(arrays[f"{part}_faces"].tolist()) for part in GROUPS}
    for part in GROUPS:  # a part's images come from its own group's typefaces only
        assert shown[part] and all(faces[i]["group"] == part for i in shown[part])
    assert not shown["val"] & (shown["train"] | shown["test"]) and not shown["train"] & shown["test"]
    packages = {part: {f["package"] for f in faces if f["group"] == part} for part in GROUPS}
    assert not packages["train"] & packages["val"] and not packages["train"] & packages["test"] \
        and not packages["val"] & packages["test"]  # whole packages: no design has a sibling weight elsewhere
    for part in GROUPS:
        held = {f["family"] for f in faces if f["group"] == part}
        assert set(built["facts"]["spread_families"]) <= held, (part, held)
    for f in faces:
        assert f["family"] == style_family(f["package"], f["name"])


def test_every_fold_keeps_the_parts_apart_by_character_and_typeface(folds):
    assert sorted(folds) == list(range(SMALL.folds))
    for built in folds.values():
        check_protocol(built, SMALL.split_characters)
    # folds redraw the character split from one pool
    first, second = ({part: set(b["arrays"][f"{part}_labels"].tolist()) for part in GROUPS} for b in folds.values())
    assert set().union(*first.values()) == set().union(*second.values()) and first["test"] != second["test"]


def test_style_families_come_from_names_then_packages():
    assert style_family("fonts-noto-cjk", "Noto Serif CJK JP Bold") == "ming"
    assert style_family("fonts-noto-cjk", "Noto Sans CJK JP") == "sans"
    assert style_family("fonts-unfonts-core", "Un Gungseo") == "kai"
    assert style_family("fonts-unfonts-core", "Un Batang") == "ming"
    assert style_family("fonts-misaki", "MisakiGothic") == "pixel"
    assert style_family("fonts-seto", "SetoFont") == "hand-written"
    assert style_family("fonts-kouzan-mouhitsu", "KouzanBrushFont") == "kai"


def test_no_two_images_of_a_class_are_the_same_rendering(small):
    arrays = small["arrays"]
    for part in ("train", "val", "test"):
        images, labels, faces = arrays[f"{part}_images"], arrays[f"{part}_labels"], arrays[f"{part}_faces"]
        assert images.dtype == np.uint8 and images.shape[1:] == (SMALL.image_size, SMALL.image_size)
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            assert len(set(faces[rows].tolist())) == len(rows)  # one image per typeface
            for i in range(len(rows)):
                for j in range(i):
                    assert rendering_distance(images[rows[i]], images[rows[j]]) >= SMALL.duplicate_threshold


def test_regional_variants_and_shared_glyphs_are_removed_as_duplicates(small):
    left_out = small["facts"]["left_out"]
    kept_files = [(f["file"].rsplit("/", 1)[-1], f["index"]) for f in small["facts"]["faces"]]
    noto_kept = [k for k in kept_files if k[0].startswith("NotoSansCJK")]
    # one Sans face per weight survives of the 10 regional and Mono variants in each collection
    assert 1 <= len(noto_kept) <= 2
    assert sum("duplicate of" in why for key, why in left_out.items() if key.startswith("NotoSansCJK")) >= 8
    ipa = [k for k in kept_files if k[0].startswith("ipag") or k[0].startswith("ipagp")]
    assert len(ipa) <= 1


def test_counts_and_description(small, monkeypatch):
    c = counts(small)
    assert c["typefaces"] == len(small["facts"]["faces"])
    assert c["test"]["characters"] == 5 and c["test"]["typefaces_per_character"]["min"] >= SMALL.min_held_out
    assert c["train"]["images"] == len(small["arrays"]["train_labels"])


def test_load_records_every_typeface_with_package_and_version_and_uses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(HanTypefaces, "spec", SMALL)
    splits = HanTypefaces.load()
    typefaces_used = splits.source["typefaces"]
    assert typefaces_used and all(t["package"] in SMALL.packages and t["version"] for t in typefaces_used)
    assert len(list(tmp_path.glob("han-typefaces/build-*.npz"))) == SMALL.folds  # every fold built and cached at once
    other_fold = HanTypefaces.load(fold=1)
    assert other_fold.source["fold"] == 1 and other_fold.source["fingerprint"] != splits.source["fingerprint"]
    with pytest.raises(DatasetNotFoundError, match="folds 0..1"):
        HanTypefaces.load(fold=2)
    again = HanTypefaces.load()
    assert np.array_equal(again.test.images, splits.test.images) and again.source["fingerprint"] == splits.source["fingerprint"]
    assert "characters" in HanTypefaces.describe(splits) and "typefaces" in HanTypefaces.describe(splits)
    # another spec is another build, under another key
    _, other = load_build(dataclasses.replace(SMALL, seed=1), cache=False)
    assert other != splits.source["fingerprint"]


def test_a_missing_font_package_fails_naming_it_and_the_install_command():
    spec = dataclasses.replace(SMALL, packages=("fonts-arphic-ukai", "fonts-no-such-cjk-font"))
    with pytest.raises(DatasetNotFoundError, match=r"fonts-no-such-cjk-font.*apt-get install fonts-no-such-cjk-font"):
        build_folds(spec)
    assert typefaces.missing_packages(("fonts-arphic-ukai", "fonts-no-such-cjk-font")) == ["fonts-no-such-cjk-font"]


def test_too_few_characters_fail_clearly():
    spec = dataclasses.replace(SMALL, packages=("fonts-arphic-ukai", "fonts-arphic-uming"), min_typefaces=5)
    with pytest.raises(DatasetNotFoundError, match="distinct typefaces"):
        build_folds(spec)


def test_bad_specs_are_refused():
    for bad in (dict(image_size=4), dict(duplicate_threshold=1.5), dict(split_characters=(0, 1, 1)),
                dict(typeface_groups=(0.5, 0.5, 0.0)), dict(min_held_out=1), dict(fold=2), dict(folds=0)):
        with pytest.raises(ValueError):
            dataclasses.replace(SMALL, **bad).validate()


def test_a_data_root_is_refused_with_the_reason():
    with pytest.raises(DatasetNotFoundError, match="font packages"):
        HanTypefaces.load(root="/tmp")


# ---------------------------------------------------------------------------------------------------
# a build carried to a machine without the fonts ($DMLBENCH_HAN_TYPEFACES_BUILD)


def save_build(built: dict, path, drop: tuple[str, ...] = ()) -> None:
    """The build as load_build caches it (np.savez_compressed of the arrays and the facts as JSON)."""
    buffer = io.BytesIO()
    arrays = {k: v for k, v in built["arrays"].items() if k not in drop}
    np.savez_compressed(buffer, **arrays, facts=np.array(json.dumps(built["facts"])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


@pytest.fixture
def carried(small, tmp_path, monkeypatch):
    """SMALL's build in the cache under its real fingerprint, and a copy of it elsewhere: (splits from
    the fonts and the cache, the copy's path)."""
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(typefaces.BUILD_VARIABLE, raising=False)
    monkeypatch.setattr(HanTypefaces, "spec", SMALL)
    key = typefaces.fingerprint(SMALL, typefaces.discover_faces(SMALL.packages))
    save_build(small, typefaces.build_path(key))
    here = HanTypefaces.load()  # the fonts are here: the cached build of their fingerprint
    assert here.source["fingerprint"] == key and "carried_build" not in here.source
    copy = tmp_path / "carried" / f"build-{key}.npz"
    save_build(small, copy)
    return here, copy


def fonts_absent(monkeypatch):
    monkeypatch.setattr(typefaces, "package_files", lambda package: None)


def test_a_carried_build_loads_without_the_fonts(carried, monkeypatch):
    here, copy = carried
    fonts_absent(monkeypatch)
    with pytest.raises(DatasetNotFoundError, match="apt-get install"):  # unset: the fonts are looked for, as before
        HanTypefaces.load()
    monkeypatch.setenv(typefaces.BUILD_VARIABLE, str(copy))
    there = HanTypefaces.load()
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(there, part).images, getattr(here, part).images)
        np.testing.assert_array_equal(getattr(there, part).labels, getattr(here, part).labels)
    assert (there.mean, there.std, there.class_names) == (here.mean, here.std, here.class_names)
    assert there.source["fingerprint"] == here.source["fingerprint"] == copy.stem.removeprefix("build-")
    assert there.source["carried_build"] == str(copy) and there.source["where"].startswith("a carried build")
    assert there.source["typefaces"] == here.source["typefaces"] and there.source["counts"] == here.source["counts"]


def test_a_wrong_or_corrupt_carried_build_fails_clearly(carried, small, monkeypatch):
    _, copy = carried
    fonts_absent(monkeypatch)
    folder, name = copy.parent, copy.name

    def refused(path, match):
        monkeypatch.setenv(typefaces.BUILD_VARIABLE, str(path))
        with pytest.raises(DatasetNotFoundError, match=match) as raised:
            HanTypefaces.load()
        assert typefaces.BUILD_VARIABLE in str(raised.value)

    refused(folder / "absent" / name, "no such file")
    refused(folder / "my-build.npz", "named build-<16 hex digits>.npz")
    (folder / "cut" / name).parent.mkdir()
    (folder / "cut" / name).write_bytes(copy.read_bytes()[:2000])
    refused(folder / "cut" / name, "not a readable han-typefaces build")
    (folder / "text" / name).parent.mkdir()
    (folder / "text" / name).write_text("not a build")
    refused(folder / "text" / name, "not a readable han-typefaces build")
    save_build(small, folder / "partial" / name, drop=("test_faces",))
    refused(folder / "partial" / name, "lacks the arrays test_faces")
    monkeypatch.setattr(HanTypefaces, "spec", dataclasses.replace(SMALL, seed=1))
    refused(copy, r"other settings \(seed differ")


# ---- the pretraining pool (dmlbench/datasets/glyph_pool.py): characters no fold evaluates, drawn only in each
# fold's training typefaces; built from the same small benchmark as the tests above ----------------------------

POOL = PoolSpec(characters=12, min_renderings=2)


@pytest.fixture(scope="module")
def pools(folds):
    return build_pools(SMALL, POOL, folds)


def test_pool_characters_are_disjoint_from_every_evaluated_character_of_every_fold(folds, pools):
    evaluated = evaluated_characters(folds)
    assert len(evaluated) == sum(SMALL.split_characters)  # the folds's pool, the same in every fold
    for fold, pool in pools.items():
        characters = set(np.unique(pool["arrays"]["labels"]).tolist())
        assert len(characters) == POOL.characters
        assert not characters & evaluated, f"fold {fold} pretrains on evaluated characters"
        for built in folds.values():
            for part in ("train", "val", "test"):
                assert not characters & set(built["arrays"][f"{part}_labels"].tolist())


def test_each_fold_sees_only_its_training_typefaces(folds, pools):
    for fold, pool in pools.items():
        groups = [face["group"] for face in folds[fold]["facts"]["faces"]]
        used = set(pool["arrays"]["faces"].tolist())
        assert {groups[i] for i in used} == {"train"}
        held_out = {i for i, g in enumerate(groups) if g in GROUPS[1:]}
        assert not used & held_out
        keys = [face["file"].rsplit("/", 1)[-1] + f"#{face['index']}" for face in folds[fold]["facts"]["faces"]]
        assert pool["facts"]["typefaces"] == [k for k, g in zip(keys, groups) if g == "train"]
        labels, counts = np.unique(pool["arrays"]["labels"], return_counts=True)
        assert counts.min() >= POOL.min_renderings


def test_the_same_characters_in_every_fold_and_the_build_is_deterministic(folds, pools):
    characters = [set(np.unique(p["arrays"]["labels"]).tolist()) for p in pools.values()]
    assert all(c == characters[0] for c in characters)
    again = build_pools(SMALL, POOL, folds)
    assert [content_hash(p["arrays"]) for p in again.values()] == [content_hash(p["arrays"]) for p in pools.values()]
    reseeded = build_pools(SMALL, dataclasses.replace(POOL, seed=1), folds)
    assert set(np.unique(reseeded[0]["arrays"]["labels"]).tolist()) != characters[0]


def test_asking_too_much_fails_clearly(folds):
    with pytest.raises(DatasetNotFoundError, match="pretraining pool: only"):
        build_pools(SMALL, PoolSpec(characters=10**6, min_renderings=2), folds)
    with pytest.raises(ValueError, match="min_renderings"):
        PoolSpec(min_renderings=1).validate()
