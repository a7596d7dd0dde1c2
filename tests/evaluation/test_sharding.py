"""Sharded indexes answer as the unsharded ones: faiss IndexShards in one process, and
faiss.contrib.client_server over real sockets on localhost (servers stopped, no thread left behind,
every socket with a timeout)."""

import socket
import threading
import time

import numpy as np
import pytest

from dmlbench.evaluation.indexes import IndexSpec
from dmlbench.evaluation.indexes.families import build_index
from dmlbench.evaluation.indexes.sharding import (ShardClient, ShardServers, build_shards, set_nprobe, shard_ids,
                                                  sharded)

N, DIM, K = 3000, 32, 10


@pytest.fixture(scope="module")
def data():
    """Distinct random unit vectors (no exact ties among distances) and queries near some of them."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((60, DIM)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q


@pytest.fixture(scope="module")
def flat(data):
    x, q = data
    index = build_index(IndexSpec.make("flat"), x).native
    scores, ids = index.search(q, K)
    return index, scores, ids


@pytest.fixture(scope="module")
def ivf(data):
    x, _ = data
    return build_index(IndexSpec.make("ivf-flat", sweep=(16,), nlist=16), x).native


def _no_shard_threads(before: set, deadline_s: float = 5.0) -> list:
    """The threads started since ``before`` still alive after up to ``deadline_s`` seconds."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not left:
            return []
        time.sleep(0.05)
    return left


def test_shard_ids_cover_every_vector_once():
    blocks = shard_ids(10, 3)
    assert [len(b) for b in blocks] == [4, 3, 3]
    assert np.array_equal(np.concatenate(blocks), np.arange(10))
    with pytest.raises(ValueError, match="shards must be between 1 and the 10 vectors"):
        shard_ids(10, 11)


def test_index_shards_of_the_flat_index_answer_as_the_unsharded_one(data, flat):
    x, q = data
    index, scores, ids = flat
    shards = build_shards(index, x, 3)
    assert [s.ntotal for s in shards] == [1000, 1000, 1000]
    together = sharded(shards)
    got_scores, got_ids = together.search(q, K)
    assert np.array_equal(got_ids, ids)
    np.testing.assert_allclose(got_scores, scores, rtol=0, atol=1e-5)
    assert (np.diff(scores, axis=1) < 0).all()  # distinct scores: the equality is not luck among ties
    with pytest.raises(ValueError, match="nprobe applies to IVF indexes only; this shard is a IndexIDMap"):
        set_nprobe(together, 4)


def test_sharded_ivf_flat_shares_its_coarse_quantiser_and_answers_as_the_unsharded_ivf(data, flat, ivf):
    x, q = data
    _, exact_scores, exact_ids = flat
    together = sharded(build_shards(ivf, x, 4))
    for nprobe in (1, 4):  # the same lists probed: the same answers as the unsharded index, not exact ones
        ivf.nprobe = nprobe
        set_nprobe(together, nprobe)
        unsharded_d, unsharded_i = ivf.search(q, K)
        got_d, got_i = together.search(q, K)
        assert np.array_equal(got_i, unsharded_i), nprobe
        np.testing.assert_allclose(got_d, unsharded_d, rtol=0, atol=1e-5)
    assert not np.array_equal(got_i, exact_ids)  # nprobe 4 of 16 misses some neighbours
    set_nprobe(together, 16)  # every list: exact
    got_d, got_i = together.search(q, K)
    assert np.array_equal(got_i, exact_ids)
    np.testing.assert_allclose(got_d, 2 - 2 * exact_scores, rtol=0, atol=1e-5)  # squared L2 of unit vectors


def test_client_server_on_localhost_answers_as_the_unsharded_index_and_stops(data, flat, ivf):
    x, q = data
    index, scores, ids = flat
    before = set(threading.enumerate())
    with ShardServers(build_shards(index, x, 3)) as servers:
        assert len(set(servers.ports)) == 3
        with socket.create_connection(("127.0.0.1", servers.ports[0]), timeout=5):  # a real listening socket
            pass
        client = servers.client()
        assert client.ntotal == N
        got_scores, got_ids = client.search(q, K)
        with pytest.raises(Exception, match="nprobe applies to IVF shards only; this shard is a IndexIDMap"):
            client.set_nprobe(4)
    assert np.array_equal(got_ids, ids)
    np.testing.assert_allclose(got_scores, scores, rtol=0, atol=1e-5)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", servers.ports[0]), timeout=5)
    assert _no_shard_threads(before) == []

    with ShardServers(build_shards(ivf, x, 2)) as servers:  # an L2 index: the merge keeps the smallest
        client = servers.client()
        client.set_nprobe(16)
        got_d, got_i = client.search(q, K)
    assert np.array_equal(got_i, ids)
    np.testing.assert_allclose(got_d, 2 - 2 * scores, rtol=0, atol=1e-5)
    assert _no_shard_threads(before) == []


def test_a_server_that_never_answers_times_out_instead_of_hanging():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # connections wait in the backlog, never served
    try:
        start = time.monotonic()
        with pytest.raises(ConnectionError, match="did not answer within 0.5 s"):
            ShardClient([("127.0.0.1", listener.getsockname()[1])], timeout_s=0.5)
        assert time.monotonic() - start < 5
    finally:
        listener.close()
