"""docs/adding-a-dataset.md: its worked example runs as the doc says.

The ```python block of the doc is written to a temporary folder as a module and imported (which
registers it); a tiny copy of its files is written, downloaded from a local mirror through the
class's archive and loaded through the registry. The registry is restored afterwards.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dmlbench.datasets import DATASETS, Dataset, load_dataset
from dmlbench.datasets.base import extra_recall_ks
from dmlbench.datasets.benchmarks import PHOTO_DATASETS, PhotoDataset
from dmlbench.datasets.download import ARCHIVES, download_dataset
from dmlbench.datasets.layouts import LayoutError
from dmlbench.study.estimate import SPLIT_SIZES

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "adding-a-dataset.md"
NAME = "tiny-shapes"


def doc_blocks() -> tuple[str, str]:
    """The doc's python block (the module) and its text block (the registration line)."""
    text = DOC.read_text()
    python = re.findall(r"```python\n(.*?)```", text, re.S)
    plain = re.findall(r"```text\n(.*?)```", text, re.S)
    assert len(python) == 1 and len(plain) == 1, "the doc holds one module and one registration line"
    return python[0], plain[0]


@pytest.fixture
def example(tmp_path, monkeypatch):
    """The doc's module imported from a temporary folder, registered for this test only."""
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))  # restored after the test
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DMLBENCH_DATA", "")
    source, _ = doc_blocks()
    path = tmp_path / "modules" / "tiny_shapes.py"
    path.parent.mkdir()
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tiny_shapes", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "tiny_shapes", module)
    spec.loader.exec_module(module)
    return module


def write_tiny_shapes(folder: Path) -> None:
    """8 classes x 10 small JPEGs and shapes.txt, as the doc describes the layout."""
    rng = np.random.default_rng(0)
    lines = []
    for label in range(1, 9):
        for j in range(10):
            relative = f"class_{label}/{j}.jpg"
            target = folder / "images" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(rng.integers(0, 255, size=(20 + j, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(target, quality=90)
            lines.append(f"{label} {relative}")
    (folder / "shapes.txt").write_text("\n".join(lines) + "\n")


def test_the_example_registers_with_its_facts(example):
    cls = DATASETS.get(NAME)
    assert cls is example.TinyShapes and issubclass(cls, PhotoDataset) and issubclass(cls, Dataset)
    assert NAME in PHOTO_DATASETS
    assert SPLIT_SIZES[NAME] == (40, 40, 0)
    assert extra_recall_ks(NAME) == (1, 2, 4, 8)
    assert ARCHIVES[NAME][0].filename == "tiny_shapes.tgz"
    assert cls.__doc__ == cls.description


def test_the_example_downloads_and_loads_through_the_registry(example, tmp_path):
    source = tmp_path / "source" / "tiny_shapes"
    write_tiny_shapes(source)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "tiny_shapes.tgz", "w:gz") as tar:
        tar.add(source, arcname="tiny_shapes")
    root = tmp_path / "data"
    assert download_dataset(NAME, root, base_url=mirror.as_uri()) == root / "tiny_shapes"

    splits = load_dataset(NAME, root=str(root), image_size=32)
    train, val, test = set(splits.train.classes), set(splits.val.classes), set(splits.test.classes)
    assert not train & val and not train & test and not val & test
    assert train | val == {1, 2, 3, 4} and test == {5, 6, 7, 8}
    assert (len(splits.train), len(splits.val), len(splits.test)) == (30, 10, 40)
    assert (len(train), len(val)) == (3, 1)
    assert len(splits.train) + len(splits.val) == SPLIT_SIZES[NAME][0] and len(splits.test) == SPLIT_SIZES[NAME][1]
    assert splits.gallery is None
    image = splits.test.images[0]
    assert image.ndim == 3 and image.shape[0] == 3 and image.dtype == np.uint8


def test_a_folder_without_the_marker_is_named(example, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LayoutError, match=r"no folder holding shapes.txt.*looked in: .*empty"):
        load_dataset(NAME, root=str(tmp_path / "empty"))


def test_registration_is_one_import_line_in_the_package():
    """The doc's registration line imports the module it names; the package does so for every dataset module."""
    _, registration = doc_blocks()
    assert registration.strip() == "from .tiny_shapes import TinyShapes"
    init = ast.parse((REPO / "dmlbench" / "datasets" / "__init__.py").read_text())
    imported = {node.module for node in ast.walk(init) if isinstance(node, ast.ImportFrom) and node.level == 1}
    registering = {path.stem for path in (REPO / "dmlbench" / "datasets").glob("*.py")
                   if "@register_dataset" in path.read_text() and path.stem != "base"}
    assert registering == {"fashion_mnist", "typefaces", "cub", "cars196", "sop", "inshop"}
    assert registering <= imported
    assert {"fashion-mnist", "han-typefaces", "cub", "cars196", "sop", "inshop"} <= set(DATASETS.names())
