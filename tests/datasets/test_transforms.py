"""Protocol transforms: output size and statistics, randomness only where the protocol has it."""

import pytest
import torch

from dmlbench.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from dmlbench.datasets.transforms import train_transform


def image(h=300, w=400, seed=0):
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_eval_transform_is_a_deterministic_centre_crop():
    x = image()
    out = eval_transform(224)(x)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, eval_transform(224)(x))
    # a constant image of ImageNet's mean colour normalises to zero
    grey = (torch.tensor(IMAGENET_MEAN)[:, None, None] * 255).round().to(torch.uint8).expand(3, 300, 400).clone()
    assert eval_transform(227)(grey).abs().max() < 0.5 / 255 / min(IMAGENET_STD) + 1e-6


def test_train_transform_crops_and_flips_at_random():
    x = image()
    transform = train_transform(227)
    torch.manual_seed(0)
    a = transform(x)
    b = transform(x)
    assert a.shape == b.shape == (3, 227, 227)
    assert not torch.equal(a, b)
    torch.manual_seed(0)
    torch.testing.assert_close(transform(x), a)  # seeded by torch's global generator


@pytest.mark.parametrize("call,message", [
    (lambda: train_transform(0), "crop size must be a positive integer"),
    (lambda: train_transform(224, scale=(0.5, 0.2)), r"scale must satisfy 0 < low <= high <= 1, got \(0.5, 0.2\)"),
    (lambda: eval_transform(224, resize=200), r"resize \(200\) must be at least the crop size \(224\)"),
])
def test_bad_sizes(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_batches_normalised_on_the_device_equal_the_per_image_transform():
    import torch

    from dmlbench.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, normalize_batch

    images = torch.randint(0, 256, (4, 3, 40, 52), dtype=torch.uint8)
    crop = eval_transform(32, normalize=False)
    raw = torch.stack([crop(image) for image in images])
    assert raw.dtype == torch.uint8 and raw.shape == (4, 3, 32, 32)
    batch = normalize_batch(raw, IMAGENET_MEAN, IMAGENET_STD)
    reference = torch.stack([eval_transform(32)(image) for image in images])
    assert batch.is_contiguous(memory_format=torch.channels_last) and batch.dtype == torch.float32
    assert torch.allclose(batch, reference, atol=1e-5, rtol=0)
