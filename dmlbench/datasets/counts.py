"""Each photo benchmark's published image and class counts, checked whenever its layout is read.

A truncated or edited list, a missing image folder or a mix of two variants would otherwise train
and test on wrong splits without a word. The numbers are the ones the reference loaders' own tests
assert (pytorch-metric-learning, open-metric-learning):

| dataset | images | train images / classes | test images / classes | gallery images / classes |
|---|---|---|---|---|
| CUB-200-2011 | 11,788 | 5,864 / 100 | 5,924 / 100 | |
| Cars196 | 16,185 | 8,054 / 98 | 8,131 / 98 | |
| SOP | 120,053 | 59,551 / 11,318 | 60,502 / 11,316 | |
| In-Shop | 52,712 | 25,882 / 3,997 | 14,218 queries / 3,985 | 12,612 / 3,985 |

"Train" counts the train classes before the validation classes are carved out of them. Each dataset
class carries its own as ``counts`` (a test's miniature carries its own the same way). A deliberate
subset passes only with ``subset=True`` (the run setting ``data_subset: true``). The counts found are
recorded beside the published ones, and the subset flag, in the splits' ``source["count_check"]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .layouts import Layout, LayoutError

SUBSET_SETTING = "data_subset: true"


@dataclass(frozen=True)
class Counts:
    images: int  # every image of the dataset once
    train: int  # images of the train classes (validation classes included)
    test: int  # test images (In-Shop: the queries)
    train_classes: int
    test_classes: int
    gallery: int = 0  # In-Shop's gallery
    gallery_classes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


LABELS = {"images": "images in all", "train": "train-class images", "test": "test images",
          "train_classes": "train classes", "test_classes": "test classes", "gallery": "gallery images",
          "gallery_classes": "gallery classes"}

OFFICIAL = {
    "cub": Counts(11788, 5864, 5924, 100, 100),
    "cars196": Counts(16185, 8054, 8131, 98, 98),
    "sop": Counts(120053, 59551, 60502, 11318, 11316),
    "inshop": Counts(52712, 25882, 14218, 3997, 3985, 12612, 3985),
}


class CountMismatch(LayoutError):
    """A layout's images or classes differ from the dataset's published counts."""


def layout_counts(layout: Layout) -> Counts:
    """What ``layout`` holds, counted as the published numbers count."""
    train_labels = list(layout.train.labels) + list(layout.val.labels)
    gallery = layout.gallery
    every = set(layout.train.paths) | set(layout.val.paths) | set(layout.test.paths) | set(gallery.paths if gallery else [])
    return Counts(images=len(every), train=len(train_labels), test=len(layout.test),
                  train_classes=len(set(train_labels)), test_classes=len(layout.test.classes),
                  gallery=len(gallery) if gallery else 0, gallery_classes=len(gallery.classes) if gallery else 0)


def check_counts(name: str, layout: Layout, expected: Counts | None, *, variant: str, subset: bool = False) -> dict:
    """The counts record of ``layout`` (found, expected, whether a subset was allowed); CountMismatch
    naming every count that differs and the likely cause, unless ``subset``."""
    found = layout_counts(layout)
    record = {"found": found.as_dict(), "expected": expected.as_dict() if expected else None, "subset": subset}
    if expected is None or found == expected or subset:
        return record
    wrong = [f.name for f in fields(Counts) if getattr(found, f.name) != getattr(expected, f.name)]
    shown = "; ".join(f"{LABELS[key]}: expected {getattr(expected, key):,}, found {getattr(found, key):,}"
                      for key in wrong)
    fewer = any(getattr(found, key) < getattr(expected, key) for key in wrong)
    cause = ("fewer than published: a truncated or edited list file (restore it from the dataset's archive), "
             "or only part of a variant's annotations (such as a devkit without its test labels)" if fewer else
             "more than published: another version of the list, or files of two variants in one folder")
    raise CountMismatch(f"{name} ({variant} layout in {layout.root}): {shown}. Likely cause: {cause}. A deliberate "
                        f"subset needs the run setting '{SUBSET_SETTING}' (each run records it and the counts).")
