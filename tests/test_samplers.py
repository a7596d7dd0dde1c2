import numpy as np
import pytest
import torch

from dmlbench.errors import ConfigError
from dmlbench.samplers import PKSampler


def labels_of(counts):
    return np.repeat(np.arange(len(counts)), counts)


def sampler(labels, P=4, K=3, seed=0, batches=None):
    return PKSampler(labels, P, K, batches_per_epoch=batches, generator=torch.Generator().manual_seed(seed))


def test_every_batch_is_exactly_p_classes_times_k_images():
    labels = labels_of([20, 15, 30, 12, 25, 18])
    for batch in sampler(labels, P=4, K=3, batches=50):
        assert len(batch) == 12
        classes, counts = np.unique(labels[batch], return_counts=True)
        assert len(classes) == 4 and (counts == 3).all()
        assert len(set(batch)) == 12  # no image twice in a batch


def test_same_seed_same_batches_other_seed_other_batches():
    labels = labels_of([10] * 8)
    a = list(sampler(labels, seed=3, batches=20))
    b = list(sampler(labels, seed=3, batches=20))
    c = list(sampler(labels, seed=4, batches=20))
    assert a == b and a != c


def test_epochs_continue_the_stream_reproducibly():
    labels = labels_of([10] * 5)
    s1, s2 = sampler(labels, seed=1, batches=5), sampler(labels, seed=1, batches=5)
    epochs1 = [list(s1) for _ in range(3)]
    epochs2 = [list(s2) for _ in range(3)]
    assert epochs1 == epochs2 and epochs1[0] != epochs1[1]


def test_no_image_repeats_before_its_class_is_exhausted():
    labels = labels_of([12, 12, 12])
    seen = {c: [] for c in range(3)}
    for batch in sampler(labels, P=3, K=4, batches=3):  # 3 batches x 4 = one pass over each class
        for i in batch:
            seen[int(labels[i])].append(i)
    for members in seen.values():
        assert len(members) == len(set(members)) == 12


def test_class_smaller_than_k_is_filled_with_replacement():
    labels = labels_of([2, 10, 10])
    for batch in sampler(labels, P=3, K=4, batches=10):
        small = [i for i in batch if labels[i] == 0]
        assert len(small) == 4 and set(small) <= {0, 1}


def test_default_length_is_one_pass():
    assert len(sampler(labels_of([30] * 4), P=2, K=5)) == 120 // 10


def test_bad_p_k_fail_clearly():
    with pytest.raises(ConfigError, match="P=9 classes per batch but the data has only 3 classes"):
        sampler(labels_of([5, 5, 5]), P=9)
    with pytest.raises(ConfigError, match="positive"):
        sampler(labels_of([5, 5, 5]), P=2, K=0)
