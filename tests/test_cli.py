"""'dmlbench data prepare' and what it prints of a dataset: the split sizes, or the dataset's own description."""

import yaml

from dmlbench.cli import _describe_splits, main
from dmlbench.datasets import DATASETS, HanTypefaces, load_dataset

from .support import user_module

DESCRIBED = '''
from dmlbench.datasets import FashionMNIST


class Described(FashionMNIST):
    """Fashion-MNIST with a summary of its own."""

    @staticmethod
    def describe(splits):
        return f"described: {len(splits.train.classes)} training classes, {len(splits.test)} test images"
'''


def test_data_prepare_fashion_mnist_prints_the_split_sizes(isolated, tiny_fmnist, capsys):
    assert main(["data", "prepare", "fashion-mnist", "--root", str(tiny_fmnist)]) == 0
    splits = load_dataset("fashion-mnist", root=tiny_fmnist)
    expected = (f"fashion-mnist: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)} "
                f"({splits.source['where']})")
    assert capsys.readouterr().out.strip() == expected
    assert _describe_splits("fashion-mnist", splits) == expected


def test_describe_splits_uses_the_dataset_class_describe(isolated, tmp_path, monkeypatch):
    user_module(tmp_path, monkeypatch, "described.py", DESCRIBED)
    splits = load_dataset("fashion-mnist")
    assert _describe_splits("described:Described", splits) == (
        f"described: {len(splits.train.classes)} training classes, {len(splits.test)} test images")
    assert getattr(DATASETS.get("fashion-mnist"), "describe", None) is None
    assert DATASETS.get("han-typefaces").describe is HanTypefaces.describe


def test_study_prepare_data_prints_each_datasets_description(isolated, tmp_path, monkeypatch, capsys):
    user_module(tmp_path, monkeypatch, "described.py", DESCRIBED)
    study = tmp_path / "described.yaml"
    study.write_text(yaml.safe_dump({"datasets": ["described:Described", "fashion-mnist"],
                                     "cells": [{"loss": "contrastive", "miner": "none"}]}))
    assert main(["study", str(study), "--prepare-data"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("described: 5 training classes, ") and out[1].startswith("fashion-mnist: train ")
