"""The augment setting: per-image random affine maps and stroke dilation / erosion, seeded and resumable."""

import math

import pytest
import torch
import torch.nn.functional as F

from dmlbench.config import RunConfig
from dmlbench.datasets import load_dataset
from dmlbench.training import resume
from dmlbench.training.augment import Augmenter
from dmlbench.training.loop import train

from ..support import tiny_settings
from .test_resume import Interrupted, stop_during, strip

ALL = {"rotate": 10, "scale": 0.1, "shift": 0.1, "shear": 5, "stroke": 0.5}


def images(n=16, channels=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)


def test_the_seed_fixes_the_output():
    x = images()
    assert torch.equal(Augmenter(ALL, seed=3)(x), Augmenter(ALL, seed=3)(x))
    assert not torch.equal(Augmenter(ALL, seed=3)(x), Augmenter(ALL, seed=4)(x))
    augmenter = Augmenter(ALL, seed=3)
    assert not torch.equal(augmenter(x), augmenter(x))  # a stream: the next batch draws anew
    assert not torch.equal(Augmenter(ALL, seed=3)(x), x)


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_and_channels_last_are_kept(channels):
    x = images(channels=channels)
    for amounts in (ALL, {"rotate": 0}, {"stroke": 1}):
        out = Augmenter(amounts, seed=0)(x)
        assert out.shape == x.shape and out.dtype == x.dtype
        assert out.is_contiguous(memory_format=torch.channels_last)
    assert Augmenter(ALL, seed=0)(x.double()).dtype == torch.float64


def test_zero_or_vanishing_amounts_are_the_identity():
    x = images()
    assert torch.equal(Augmenter({"rotate": 0, "scale": 0, "shift": 0, "shear": 0, "stroke": 0}, seed=0)(x), x)
    # through the resampling: an affine map within 1e-6 of the identity reproduces every pixel
    tiny = Augmenter({"rotate": 1e-6, "scale": 1e-9, "shift": 1e-9, "shear": 1e-6}, seed=0)
    torch.testing.assert_close(tiny(x), x, rtol=0, atol=1e-5)


def test_matrices_stay_in_their_ranges():
    rotations = Augmenter({"rotate": 30}, seed=0).matrices(200)
    linear = rotations[:, :, :2]
    torch.testing.assert_close(linear @ linear.transpose(1, 2), torch.eye(2).expand(200, 2, 2), rtol=0, atol=1e-6)
    angles = torch.atan2(linear[:, 1, 0], linear[:, 0, 0]) * 180 / math.pi
    assert angles.abs().max() <= 30 and angles.abs().max() > 20 and (rotations[:, :, 2] == 0).all()
    scaled = Augmenter({"scale": 0.2}, seed=0).matrices(200)
    factors = 1 / scaled[:, 0, 0]
    assert (factors >= 0.8 - 1e-6).all() and (factors <= 1.2 + 1e-6).all() and (scaled[:, 0, 1] == 0).all()
    shifts = Augmenter({"shift": 0.25}, seed=0).matrices(200)[:, :, 2]  # affine_grid units: 2 = the whole side
    assert shifts.abs().max() <= 0.5 and shifts.abs().max() > 0.4


def test_stroke_one_thickens_or_thins_every_image():
    x = images(n=64)
    out = Augmenter({"stroke": 1}, seed=0)(x)
    dilated, eroded = F.max_pool2d(x, 3, 1, 1), -F.max_pool2d(-x, 3, 1, 1)
    thick = [torch.equal(out[i], dilated[i]) for i in range(len(x))]
    thin = [torch.equal(out[i], eroded[i]) for i in range(len(x))]
    assert all(a != b for a, b in zip(thick, thin))  # each image exactly one of the two
    assert 16 < sum(thick) < 48  # each about half of the time
    assert all(not torch.equal(out[i], x[i]) for i in range(len(x)))
    assert torch.equal(Augmenter({"stroke": 0.0}, seed=0)(x), x)


def test_a_saved_state_continues_the_same_stream():
    x = images()
    augmenter = Augmenter(ALL, seed=1)
    augmenter(x)
    state = augmenter.state_dict()
    following = [augmenter(x), augmenter(x)]
    other = Augmenter(ALL, seed=99)
    other.load_state_dict(state)
    assert all(torch.equal(other(x), expected) for expected in following)


@pytest.fixture
def splits(isolated):
    return load_dataset("fashion-mnist")


def augmented(**changes):
    return RunConfig(**tiny_settings(epochs=3, device="cpu", lr=3e-3) | dict(loss="contrastive", miner="random")
                     | changes)


def test_augmented_training_is_reproducible_and_differs_from_plain(splits):
    a = train(augmented(augment=ALL), splits, progress=False)
    b = train(augmented(augment=ALL), splits, progress=False)
    assert strip(a.history) == strip(b.history) and a.test_metrics == b.test_metrics
    assert torch.equal(a.test_embeddings, b.test_embeddings)
    plain = train(augmented(), splits, progress=False)
    assert a.history[0] == plain.history[0]  # the same untrained network: only the training images differ
    assert not torch.equal(a.test_embeddings, plain.test_embeddings)
    assert a.history[1]["loss"] != plain.history[1]["loss"]
    other_seed = train(augmented(augment=ALL, seed=1), splits, progress=False)
    assert not torch.equal(a.test_embeddings, other_seed.test_embeddings)


def test_a_resumed_augmented_run_ends_with_the_uninterrupted_numbers(splits, tmp_path):
    config = augmented(augment=ALL, epochs=4)
    whole = train(config, splits, progress=False)
    path = tmp_path / resume.RESUME_FILE
    with pytest.raises(Interrupted):
        train(config, splits, progress=False, checkpoint=path, on_epoch_end=stop_during(3))
    again = train(config, splits, progress=False, checkpoint=path)
    assert again.extra["resumed_after_epochs"] == [2]
    assert strip(again.history) == strip(whole.history) and again.test_metrics == whole.test_metrics
    assert torch.equal(again.test_embeddings, whole.test_embeddings)
