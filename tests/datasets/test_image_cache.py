"""The decoded-image cache: real JPEG/PNG files in, resized uint8 pixels out, bad files named."""

import numpy as np
import pytest
import torch
from PIL import Image

from dmlbench.datasets.image_cache import ImageCache, ImageReadError, build_cache
from dmlbench.datasets.layouts import ImageList


def write_images(root, sizes):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate(sizes):
        relative = f"images/{i:03d}.{'jpg' if i % 2 else 'png'}"
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / relative)
        paths.append(relative)
    return ImageList(paths, np.arange(len(paths), dtype=np.int64))


def test_cache_resizes_the_shorter_side_and_round_trips(tmp_path):
    images = write_images(tmp_path / "data", [(40, 30), (30, 50), (64, 64)])
    cache = build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=24)
    assert len(cache) == 3 and cache.labels.tolist() == [0, 1, 2]
    assert [tuple(cache[i].shape) for i in range(3)] == [(3, 24, 32), (3, 40, 24), (3, 24, 24)]
    with Image.open(tmp_path / "data" / images.paths[0]) as original:
        expected = np.array(original.convert("RGB").resize((32, 24), Image.Resampling.BILINEAR, reducing_gap=None))
    assert torch.equal(cache[0], torch.from_numpy(expected).permute(2, 0, 1))
    # reused, not rebuilt
    stamp = (tmp_path / "cache" / "pixels.u8").stat().st_mtime_ns
    again = build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=24)
    assert (tmp_path / "cache" / "pixels.u8").stat().st_mtime_ns == stamp and torch.equal(again[2], cache[2])
    with pytest.raises(ValueError, match="cache of other images or another size"):
        build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=32)


def test_a_corrupt_image_is_named_and_leaves_no_index(tmp_path):
    images = write_images(tmp_path / "data", [(20, 20), (20, 20)])
    (tmp_path / "data" / images.paths[1]).write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(ImageReadError, match=r"images/001.jpg cannot be decoded"):
        build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=8)
    assert not (tmp_path / "cache" / "index.npz").exists()
    assert not (tmp_path / "cache" / "pixels.u8.tmp").exists()
    (tmp_path / "data" / images.paths[1]).unlink()
    with pytest.raises(ImageReadError, match=r"images/001.jpg is missing"):
        build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=8)
    with pytest.raises(Exception, match="index.npz is missing"):
        ImageCache(tmp_path / "cache")
