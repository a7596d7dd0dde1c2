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


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from dmlbench.samplers import SAMPLERS, HierarchicalSampler, RandomBatchSampler  # noqa: E402


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=2, max_size=12), st.integers(1, 5), st.integers(1, 6),
       st.integers(0, 2**31 - 1))
def test_pk_property_exact_p_by_k_and_reproducible(counts, P, K, seed):
    labels = labels_of(counts)
    P = min(P, len(counts))
    first = list(sampler(labels, P=P, K=K, seed=seed, batches=7))
    assert first == list(sampler(labels, P=P, K=K, seed=seed, batches=7))
    for batch in first:
        classes, per_class = np.unique(labels[batch], return_counts=True)
        assert len(classes) == P and (per_class == K).all()


def test_one_pass_covers_balanced_data_exactly_once():
    labels = labels_of([12] * 6)
    s = sampler(labels, P=3, K=4, seed=2)  # no batches_per_epoch: an epoch is one pass
    assert len(s) == 6
    seen = [i for batch in s for i in batch]
    assert sorted(seen) == list(range(72))


def test_one_pass_over_unbalanced_data_never_repeats_an_image():
    labels = labels_of([40, 9, 23, 5, 17])
    s = sampler(labels, P=2, K=4, seed=3)
    seen = [i for batch in s for i in batch]
    assert len(seen) == len(set(seen))
    assert len(seen) >= 4 * (10 + 2 + 5 + 1 + 4) - 4 * 4  # all chunks but the last few


def test_random_batches_pass_over_the_data():
    labels = labels_of([10, 20, 5])
    s = RandomBatchSampler(labels, 2, 4, generator=torch.Generator().manual_seed(0))
    batches = list(s)
    assert len(batches) == 35 // 8 and all(len(b) == 8 for b in batches)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))
    with pytest.raises(ConfigError, match="batch size P x K = 40 must lie in 1 .. 35"):
        RandomBatchSampler(labels, 5, 8)


def test_hierarchical_batches_come_from_few_super_classes():
    counts = [8] * 12
    labels = labels_of(counts)
    supers = np.repeat(np.arange(12) // 3, 8)  # 4 super-classes of 3 classes each
    s = HierarchicalSampler(labels, 3, 2, super_labels=supers, super_per_batch=1,
                            generator=torch.Generator().manual_seed(0))
    batches = list(s)
    assert len(batches) > 0
    single = sum(len(np.unique(supers[b])) == 1 for b in batches)
    assert single >= len(batches) - 2  # only the end of a pass may mix super-classes
    for b in batches:
        classes, per_class = np.unique(labels[b], return_counts=True)
        assert len(classes) == 3 and (per_class == 2).all()
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen))


def test_hierarchical_needs_per_class_super_labels():
    labels = labels_of([4, 4])
    with pytest.raises(ConfigError, match="needs super-class labels"):
        HierarchicalSampler(labels, 2, 2)
    with pytest.raises(ConfigError, match="spans several super-classes"):
        HierarchicalSampler(labels, 2, 2, super_labels=np.array([0, 1, 0, 0, 1, 1, 1, 1]))
    assert SAMPLERS.names() == ["hierarchical", "pk", "random"]
