"""The official layouts of CUB, Cars196, SOP and In-Shop, on miniature copies the tests write."""

import numpy as np
import pytest
from scipy.io import savemat

from ..support import write_cars, write_cub, write_inshop, write_sop
from dmlbench.datasets.layouts import LayoutError, carve_validation, read_layout


def test_cub_split_by_class_with_a_disjoint_validation_split(tmp_path):
    write_cub(tmp_path)
    layout = read_layout("cub", tmp_path)
    assert layout.test.classes == list(range(101, 201)) and len(layout.test) == 200
    assert len(layout.val.classes) == 20 and set(layout.val.classes) <= set(range(1, 101))
    assert set(layout.train.classes) | set(layout.val.classes) == set(range(1, 101))
    assert not set(layout.train.classes) & set(layout.val.classes)
    assert layout.train.paths[0].startswith("images/001.Bird_1/")
    assert layout.class_names[200] == "200.Bird_200"
    again = read_layout("cub", tmp_path)
    assert again.val.classes == layout.val.classes  # seeded
    assert read_layout("cub", tmp_path, seed=1).val.classes != layout.val.classes


def test_cars196_from_a_real_mat_file(tmp_path):
    write_cars(tmp_path)
    layout = read_layout("cars196", tmp_path)
    assert layout.test.classes == list(range(99, 197)) and len(layout.test) == 196
    assert set(layout.train.classes) | set(layout.val.classes) == set(range(1, 99))
    assert layout.train.paths[0].startswith("car_ims/") and layout.class_names[1] == "Make 1 2012"


def test_sop_keeps_super_classes(tmp_path):
    write_sop(tmp_path)
    layout = read_layout("sop", tmp_path, val_fraction=0.3)
    assert layout.test.classes == list(range(11, 16)) and len(layout.test) == 10
    assert len(layout.val.classes) == 3 and not set(layout.val.classes) & set(layout.train.classes)
    assert layout.test.super_labels.tolist() == [5, 5, 5, 5, 6, 6, 6, 6, 7, 7]


def test_inshop_queries_against_a_gallery(tmp_path):
    write_inshop(tmp_path)
    layout = read_layout("inshop", tmp_path)
    assert len(layout.test) == 4 and len(layout.gallery) == 8
    assert layout.test.classes == layout.gallery.classes == [9, 10, 11, 12]
    assert set(layout.train.classes) | set(layout.val.classes) == set(range(1, 9))
    assert sorted(layout.class_names.values()) == ["MEN/Denim", "WOMEN/Dresses"]
    assert len(np.unique(layout.train.super_labels)) == 2


@pytest.mark.parametrize("name,writer,remove,message", [
    ("cub", write_cub, "image_class_labels.txt", "image_class_labels.txt, which is missing.*caltech"),
    ("cars196", write_cars, "cars_annos.mat", "cars_annos.mat, which is missing"),
    ("sop", write_sop, "Ebay_test.txt", "Ebay_test.txt, which is missing"),
    ("inshop", write_inshop, "Eval/list_eval_partition.txt", "list_eval_partition.txt.*missing"),
])
def test_a_missing_file_is_named(tmp_path, name, writer, remove, message):
    writer(tmp_path)
    (tmp_path / remove).unlink()
    with pytest.raises(LayoutError, match=message):
        read_layout(name, tmp_path)


def test_malformed_lines_and_files_are_named(tmp_path):
    write_cub(tmp_path / "cub")
    with (tmp_path / "cub" / "images.txt").open("a") as handle:
        handle.write("401\n")
    with pytest.raises(LayoutError, match=r"images.txt line 401 is malformed: expected 2 fields"):
        read_layout("cub", tmp_path / "cub")
    write_sop(tmp_path / "sop")
    (tmp_path / "sop" / "Ebay_test.txt").write_text("header\n1 x 1 a.JPG\n")
    with pytest.raises(LayoutError, match=r"Ebay_test.txt line 2 is malformed: 'x' is not an integer"):
        read_layout("sop", tmp_path / "sop")
    write_inshop(tmp_path / "inshop")
    path = tmp_path / "inshop" / "Eval" / "list_eval_partition.txt"
    path.write_text(path.read_text().replace(" gallery\n", " galery\n", 1))
    with pytest.raises(LayoutError, match=r"status 'galery' is not one of \['gallery', 'query', 'train'\]"):
        read_layout("inshop", tmp_path / "inshop")
    write_cars(tmp_path / "cars")
    (tmp_path / "cars" / "cars_annos.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(LayoutError, match="not a readable MATLAB file") as info:
        read_layout("cars196", tmp_path / "cars")
    assert "dmlbench data prepare cars196" in str(info.value)  # and the command that fetches it again


def test_validation_carving_arguments(tmp_path):
    write_sop(tmp_path)
    layout = read_layout("sop", tmp_path)
    with pytest.raises(ValueError, match="val_fraction must lie strictly between 0 and 1"):
        carve_validation(layout.train, 1.0, 0)
    with pytest.raises(ValueError, match="unknown dataset layout 'cub200'; valid: \\['cars196', 'cub', 'inshop', 'sop'\\]"):
        read_layout("cub200", tmp_path)
