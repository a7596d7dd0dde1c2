"""The benchmarks as users have them on disk: Cars196's devkit and class-folder copies and In-Shop's
image folders, each built in its real form (file names, .mat struct fields, CSV rows, nesting) and
read into the official class ids and splits; the published counts checked; a subset only on request."""

import numpy as np
import pytest
from scipy.io import savemat

from dmlbench.config import RunConfig
from dmlbench.datasets.benchmarks import load_benchmark
from dmlbench.datasets.counts import OFFICIAL, CountMismatch
from dmlbench.datasets.layouts import LayoutError, read_layout
from dmlbench.errors import ConfigError

from ..support import cars_records, inshop_lines, write_images, write_miniature

BOX = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
SLASHED = "Ram C/V Cargo Van Minivan 2012"  # a real Cars196 class name with a slash: its folder has '-'


def car_names():
    return [SLASHED if c == 1 else f"Make {c} 2012" for c in range(1, 197)]


def cars_images():
    """The annos miniature's 392 images: (class, whether the devkit puts it in its test half)."""
    return [(i // 2 + 1, i % 2 == 1) for i in range(392)]


def write_devkit(root, nested=False):
    """The devkit release as its archives unpack: cars_train/, cars_test/ (Kaggle's copy nests them
    once more), devkit/ with the train annotations and class names, the labelled test annotations beside it."""
    listed, rows = [], {"train": [], "test": []}
    for split in ("train", "test"):
        for number, (label, test) in enumerate([c for c in cars_images() if c[1] == (split == "test")], start=1):
            rows[split].append((10, 10, 50, 40, label, f"{number:05d}.jpg"))
            folder = f"cars_{split}/cars_{split}" if nested else f"cars_{split}"
            listed.append((f"{folder}/{number:05d}.jpg", label))
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": cars_records(BOX + ("class", "fname"), rows["train"])})
    unlabelled = [r[:4] + r[5:] for r in rows["test"]]  # the devkit's own test file has no class
    savemat(root / "devkit" / "cars_test_annos.mat", {"annotations": cars_records(BOX + ("fname",), unlabelled)})
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": cars_records(BOX + ("class", "fname"), rows["test"])})
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array(car_names(), dtype=object)})
    write_images(root, [p for p, _ in listed], [label for _, label in listed])
    return root


def write_class_folders(root):
    """The class-folder copy: names.csv, anno_train.csv / anno_test.csv (no header), and
    car_data/car_data/<split>/<class name, '/' as '-'>/<file>."""
    root.mkdir(parents=True)
    (root / "names.csv").write_text("\n".join(car_names()) + "\n")
    listed = []
    for split in ("train", "test"):
        lines = []
        for number, (label, _) in enumerate([c for c in cars_images() if c[1] == (split == "test")], start=1):
            lines.append(f"{number:05d}.jpg,10,10,50,40,{label}")
            folder = car_names()[label - 1].replace("/", "-")
            listed.append((f"car_data/car_data/{split}/{folder}/{number:05d}.jpg", label))
        (root / f"anno_{split}.csv").write_text("\n".join(lines) + "\n")
    write_images(root, [p for p, _ in listed], [label for _, label in listed])
    return root


def summary(layout):
    return {part: sorted(getattr(layout, part).labels.tolist()) for part in ("train", "val", "test")}


@pytest.mark.parametrize("variant,write", [("devkit", lambda r: write_devkit(r)),
                                           ("devkit", lambda r: write_devkit(r, nested=True)),
                                           ("csv", write_class_folders)])
def test_cars196_copies_in_circulation_read_into_the_official_classes_and_splits(tmp_path, variant, write, isolated):
    official = read_layout("cars196", write_miniature("cars196", tmp_path / "annos"))
    root = write(tmp_path / "copy")
    layout = read_layout("cars196", root)
    assert layout.variant == variant and official.variant == "annos"
    assert summary(layout) == summary(official)  # the same class ids in the same splits
    assert layout.class_names[1] == SLASHED and layout.class_names[150] == "Make 150 2012"
    splits = load_benchmark("cars196", root, image_size=32)  # the miniature's own counts are met
    assert splits.source["variant"] == variant and splits.source["count_check"]["found"]["images"] == 392
    assert len(splits.train) + len(splits.val) == 196 and len(splits.test) == 196


def test_a_devkit_without_its_test_labels_says_which_file_is_missing(tmp_path):
    root = write_devkit(tmp_path / "devkit")
    (root / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(LayoutError, match="the test labels are missing: .*cars_test_annos_withlabels.mat"):
        read_layout("cars196", root)


@pytest.mark.parametrize("folder", ["img_highres", "Img/img"])
def test_inshop_images_are_found_in_the_high_resolution_and_drive_folders(tmp_path, folder, isolated):
    official = read_layout("inshop", write_miniature("inshop", tmp_path / "official"))
    root = tmp_path / "copy"
    write_miniature("inshop", root.parent / "scratch")  # the lists only: the images go elsewhere below
    (root / "Eval").mkdir(parents=True)
    (root / "Eval" / "list_eval_partition.txt").write_text(
        (tmp_path / "scratch" / "inshop" / "Eval" / "list_eval_partition.txt").read_text())
    lines = inshop_lines()
    write_images(root, [folder + image[3:] for image, _, _ in lines], [int(item[3:]) for _, item, _ in lines])
    layout = read_layout("inshop", root)
    assert layout.variant == folder and all(p.startswith(folder + "/") for p in layout.test.paths)
    assert summary(layout) == summary(official) and sorted(layout.gallery.labels) == sorted(official.gallery.labels)
    assert len(load_benchmark("inshop", root, image_size=32).gallery) == 8


def test_an_inshop_partition_without_its_count_line_loses_no_image_and_a_wrong_count_stops(tmp_path):
    root = write_miniature("inshop", tmp_path)
    partition = root / "Eval" / "list_eval_partition.txt"
    count, *rest = partition.read_text().splitlines(keepends=True)
    partition.write_text("".join(rest))  # the header first
    layout = read_layout("inshop", root)
    assert len(layout.train) + len(layout.val) + len(layout.test) + len(layout.gallery) == 36
    partition.write_text("35\n" + "".join(rest))
    with pytest.raises(LayoutError, match="announces 35 images on its first line but lists 36"):
        read_layout("inshop", root)


def test_a_list_with_one_image_removed_fails_the_count_check_naming_expected_and_found(tmp_path, isolated):
    root = write_miniature("cub", tmp_path)
    for name in ("images.txt", "image_class_labels.txt"):
        lines = (root / name).read_text().splitlines(keepends=True)
        (root / name).write_text("".join(lines[:-1]))  # the last image (class 200, a test class) gone
    with pytest.raises(CountMismatch) as error:
        load_benchmark("cub", root, image_size=32)
    message = str(error.value)
    assert "images in all: expected 400, found 399; test images: expected 200, found 199" in message
    assert "Likely cause: fewer than published: a truncated or edited list file" in message
    assert "data_subset: true" in message
    splits = load_benchmark("cub", root, image_size=32, subset=True)  # a deliberate subset, recorded
    assert splits.source["count_check"] == {"found": {**splits.source["count_check"]["expected"], "images": 399, "test": 199},
                                       "expected": splits.source["count_check"]["expected"], "subset": True}


def test_a_listed_image_missing_on_disk_stops_before_any_decoding(tmp_path, isolated):
    root = write_miniature("sop", tmp_path)
    (root / "chair_final" / "3_0.JPG").unlink()
    with pytest.raises(LayoutError, match=r"1 of 40 listed images are missing, e\.g\. chair_final/3_0\.JPG"):
        load_benchmark("sop", root, image_size=32)


def test_the_published_counts_are_the_official_numbers():
    assert OFFICIAL["cars196"].images == 16185 == OFFICIAL["cars196"].train + OFFICIAL["cars196"].test
    assert OFFICIAL["cub"].images == 11788 and OFFICIAL["sop"].images == 120053
    assert (OFFICIAL["inshop"].images, OFFICIAL["inshop"].test, OFFICIAL["inshop"].gallery) == (52712, 14218, 12612)
    for name, counts in OFFICIAL.items():  # the facts the estimates read agree with them
        from dmlbench.datasets import DATASETS

        cls = DATASETS.get(name)
        assert (counts.train, counts.test, counts.gallery) == cls.split_sizes
        assert (counts.train_classes, counts.test_classes) == cls.num_classes


def test_data_subset_is_a_photo_setting_hashed_only_when_true():
    base = dict(dataset="cub", loss="triplet", miner="none")
    assert RunConfig(**base, data_subset=False).config_hash() == RunConfig(**base).config_hash()
    assert RunConfig(**base, data_subset=True).config_hash() != RunConfig(**base).config_hash()
    with pytest.raises(ConfigError, match="data_subset applies to the photo datasets"):
        RunConfig(dataset="fashion-mnist", loss="triplet", miner="none", data_subset=True).check_settings()
    with pytest.raises(ConfigError, match="data_subset must be true, false or None"):
        RunConfig(**base, data_subset="yes").check_settings()


def test_prepare_check_verifies_counts_images_and_cache_on_one_screen(tmp_path, isolated):
    from dmlbench.datasets.check import check_prepared

    root = write_miniature("cub", tmp_path / "data")
    text, ok = check_prepared("cub", root, image_size=32)
    assert not ok and "cache   not built for these lists at this size" in text
    assert "counts  OK: images in all 400, train-class images 200, test images 200, train classes 100, test " \
           "classes 100, as published" in text and "images  OK: all 400 listed images decode" in text
    load_benchmark("cub", root, image_size=32)
    text, ok = check_prepared("cub", root, image_size=32, workers=2)
    assert ok and text.splitlines()[0].startswith(f"cub: official layout in {root}") and len(text.splitlines()) == 5
    assert "cache   OK: 400 images" in text and text.endswith("all checks passed")
    broken = root / "images" / "001.Bird_1" / "bird_1_0.jpg"
    broken.write_bytes(broken.read_bytes()[:200])
    text, ok = check_prepared("cub", root, image_size=32)
    assert not ok and "images  FAILED: 1 of 400 missing or unreadable, e.g. " + str(broken) in text


def test_the_command_line_check_exits_non_zero_on_a_failed_check(tmp_path, isolated, capsys):
    from dmlbench.cli import main

    root = write_miniature("sop", tmp_path / "data")
    assert main(["data", "prepare", "sop", "--root", str(root), "--image-size", "32", "--workers", "1"]) == 0
    assert main(["data", "prepare", "sop", "--root", str(root), "--image-size", "32", "--check"]) == 0
    assert "all checks passed" in capsys.readouterr().out
    lines = (root / "Ebay_test.txt").read_text().splitlines(keepends=True)
    (root / "Ebay_test.txt").write_text("".join(lines[:-1]))
    assert main(["data", "prepare", "sop", "--root", str(root), "--image-size", "32", "--check"]) == 1
    out = capsys.readouterr().out
    assert "counts  FAILED: images in all 39, published 40; test images 9, published 10" in out
    assert "cache   not built for these lists" in out  # the cache is of the 40 images


def test_a_failed_download_tries_the_same_file_elsewhere_and_names_the_alternatives(tmp_path):
    import hashlib

    from dmlbench.datasets import DATASETS
    from dmlbench.datasets.download import DownloadError, _fetch_any

    served = tmp_path / "served.zip"
    served.write_bytes(b"the archive")
    md5 = hashlib.md5(b"the archive").hexdigest()
    missing = (tmp_path / "gone.zip").as_uri()
    got = _fetch_any("sop", [missing, served.as_uri()], tmp_path / "downloads" / "a.zip", md5, tmp_path)
    assert got.read_bytes() == b"the archive"
    with pytest.raises(DownloadError) as error:
        _fetch_any("cars196", [missing, (tmp_path / "also-gone").as_uri()], tmp_path / "b.mat", md5, tmp_path)
    message = str(error.value)
    assert f"could not download {missing}" in message and "Also tried: could not download" in message
    assert "anno_train.csv" in message and "cars_test_annos_withlabels.mat" in message and str(tmp_path) in message
    sop = DATASETS.get("sop").archives[0]
    assert sop.url.startswith("ftp://") and sop.mirrors == ("http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",)


def test_inshop_images_in_no_known_folder_fail_before_decoding_naming_the_folders(tmp_path, isolated):
    from ..support import write_inshop

    root = tmp_path / "inshop"
    write_inshop(root)  # the partition file alone
    with pytest.raises(LayoutError, match=r"36 of 36 listed images are missing.*img/, img_highres/, Img/img/"):
        load_benchmark("inshop", root, image_size=32)
