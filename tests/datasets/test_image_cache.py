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


def test_parallel_decoding_writes_the_same_cache_as_one_process(tmp_path):
    from dmlbench.datasets.image_cache import BLOCK

    sizes = [(20 + i % 7, 18 + i % 5) for i in range(2 * BLOCK + 40)]  # three blocks
    images = write_images(tmp_path / "data", sizes)
    one = build_cache(tmp_path / "data", images, tmp_path / "one", shorter_side=12, workers=1, progress=False)
    two = build_cache(tmp_path / "data", images, tmp_path / "two", shorter_side=12, workers=2, progress=False)
    assert (tmp_path / "one" / "pixels.u8").read_bytes() == (tmp_path / "two" / "pixels.u8").read_bytes()
    assert one.paths == two.paths and np.array_equal(one.offsets, two.offsets)
    assert not any((tmp_path / "two" / name).exists() for name in ("pixels.u8.partial", "blocks.done", "plan.json"))


def test_too_little_free_space_stops_before_decoding_and_says_how_much_is_needed(tmp_path):
    from dmlbench.datasets.image_cache import CacheSpaceError

    images = write_images(tmp_path / "data", [(400, 300), (300, 400)])  # 341x256 + 256x341 pixels
    needed = 2 * 341 * 256 * 3 * 1.02
    with pytest.raises(CacheSpaceError) as error:
        build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=256, free_bytes=lambda folder: 100_000)
    assert f"needs {needed / 1e6:,.1f} MB more on the disk of {tmp_path / 'cache'}, which has 0.1 MB free" in str(error.value)
    assert not (tmp_path / "cache" / "index.npz").exists()
    build_cache(tmp_path / "data", images, tmp_path / "cache", shorter_side=256, free_bytes=lambda folder: 10**9)


def test_an_interrupted_build_resumes_without_decoding_its_finished_blocks_again(tmp_path):
    from dmlbench.datasets.image_cache import BLOCK

    images = write_images(tmp_path / "data", [(24, 20)] * (BLOCK + 10))
    data = tmp_path / "data"
    late = data / images.paths[BLOCK + 3]  # in the second block
    whole = late.read_bytes()
    late.write_bytes(whole[: len(whole) - 100])  # truncated: its header reads, its pixels do not
    with pytest.raises(ImageReadError, match=images.paths[BLOCK + 3]):
        build_cache(data, images, tmp_path / "cache", shorter_side=16, workers=1, progress=False)
    assert (tmp_path / "cache" / "blocks.done").read_text().split() == ["0"]
    first = data / images.paths[0]
    before = first.read_bytes()
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(first)  # same size, other pixels
    late.write_bytes(whole)
    cache = build_cache(data, images, tmp_path / "cache", shorter_side=16, workers=1, progress=False)
    first.write_bytes(before)
    fresh = build_cache(data, images, tmp_path / "fresh", shorter_side=16, workers=1, progress=False)
    assert torch.equal(cache[0], fresh[0]) and cache[0].max() > 0  # block 0 came from the first attempt
    assert all(torch.equal(cache[i], fresh[i]) for i in range(len(cache)))


def test_a_16_bit_or_transparent_image_is_decoded_by_its_values(tmp_path):
    """PIL's own conversion clipped 16-bit greyscale to white and dropped transparency as it stood; the
    cache decodes a benchmark's image as the search command reads one (dmlbench.datasets.transforms)."""
    from PIL import Image

    from dmlbench.datasets.image_cache import _decode

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    Image.fromarray(ramp).save(tmp_path / "deep.png")  # a 16-bit greyscale PNG
    decoded = _decode(tmp_path / "deep.png", 64)
    assert decoded.shape == (64, 64, 3) and decoded.min() == 0 and 0 < np.median(decoded) < 255
    expected = np.rint(ramp / 257.0).astype(np.int64)
    assert np.abs(decoded[..., 0].astype(np.int64) - expected).max() <= 1
    clear = np.zeros((64, 64, 4), np.uint8)  # black, fully transparent: white once composited
    Image.fromarray(clear, "RGBA").save(tmp_path / "clear.png")
    assert (_decode(tmp_path / "clear.png", 64) == 255).all()
