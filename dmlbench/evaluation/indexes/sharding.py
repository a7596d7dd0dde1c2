"""One index split over several sub-indexes (shards), searched together in one process or over sockets.

    trained = build_index(IndexSpec.make("ivf-flat", nlist=1024), sample).native    # a trained template
    shards = build_shards(trained, vectors, 4)        # 4 faiss indexes, each holding a quarter, global ids
    index = sharded(shards)                           # faiss IndexShards: each query goes to every shard
    set_nprobe(index, 16); scores, ids = index.search(queries, 10)

    with ShardServers(shards) as servers:             # one socket server per shard on localhost
        client = servers.client()                     # a faiss.contrib.client_server.ClientIndex
        client.set_nprobe(16); scores, ids = client.search(queries, 10)

How the shards are made: each is an empty copy of a trained faiss index (``faiss.clone_index`` then
``reset``), so every shard is the same family with the same settings as the unsharded index, and an
IVF family's shards share its trained coarse quantiser (the same centroids, copied): with nprobe
lists probed, each shard searches the same lists the unsharded index would, restricted to its own
vectors, and the merged answers equal the unsharded index's. Each shard keeps the vectors' global
ids (IVF indexes store ids; any other index is wrapped in ``faiss.IndexIDMap``), so answers merge
without offsets. ``faiss.IndexShards`` (threaded: one thread per shard) sends every query to every
shard and keeps the best k of their answers.

Across machines, ``faiss.contrib.client_server`` serves a shard per process and merges on the
client. Three things of that module do not work as shipped with this project's numpy and families,
and are adapted here:

- its RPC layer unpickles only globals of ``numpy`` and ``numpy.core.multiarray``, but numpy 2
  pickles arrays through ``numpy._core.multiarray`` (the module's new name), so every search fails
  with "global 'numpy._core.multiarray._reconstruct' is forbidden": the new name is added to the
  layer's allowed modules (:func:`allow_numpy2_arrays`), allowing what the old name allowed;
- its ``SearchServer`` requires an IVF index (it extracts one on creation), so a flat shard cannot
  be served: :class:`ShardServer` extracts it only where there is one;
- its ``ClientIndex`` merges the shards' answers keeping the smallest scores, right for L2
  distances and wrong for inner products (the flat and HNSW families): :class:`ShardClient` asks
  the servers for their metric and keeps the largest scores for inner products.

Its ``run_index_server`` binds every interface, never returns and cannot be stopped, so
:class:`ShardServers` runs its own accept loop on 127.0.0.1 (a free port per shard), one thread per
connection, and stops them all on ``close``. The RPC layer trusts its peers (it exchanges pickles,
unauthenticated): serve it on a private network only.
"""

from __future__ import annotations

import socket
import threading
from multiprocessing.pool import ThreadPool

import faiss
import numpy as np
from faiss.contrib import rpc
from faiss.contrib.client_server import ClientIndex, SearchServer

ACCEPT_POLL_S = 0.1  # how often a server's accept loop looks whether it was asked to stop
NUMPY2_MODULE = "numpy._core.multiarray"


def shard_ids(n: int, shards: int) -> list[np.ndarray]:
    """The global ids of each shard: ``shards`` contiguous blocks of 0..n-1, sizes differing by one at most."""
    if not 1 <= shards <= n:
        raise ValueError(f"shards must be between 1 and the {n} vectors, got {shards}")
    return np.array_split(np.arange(n, dtype=np.int64), shards)


def empty_copy(index):
    """An empty copy of a trained faiss index: the same family, settings and trained parts."""
    copy = faiss.clone_index(index)
    copy.reset()
    return copy


def build_shards(trained, vectors, shards: int) -> list:
    """``shards`` faiss indexes, each an empty copy of ``trained`` holding one block of ``vectors`` under
    their global ids (their row numbers)."""
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if not trained.is_trained:
        raise ValueError("build_shards needs a trained index to copy (train it, or build it with build_index)")
    out = []
    for ids in shard_ids(len(x), shards):
        shard = empty_copy(trained)
        if faiss.try_extract_index_ivf(shard) is None:  # flat, HNSW, PQ, SQ: no ids of their own
            shard = faiss.IndexIDMap(shard)
        shard.add_with_ids(x[ids], ids)
        out.append(shard)
    return out


def sharded(shards: list, threaded: bool = True):
    """A ``faiss.IndexShards`` over ``shards`` (global ids kept: no offsets added)."""
    index = faiss.IndexShards(shards[0].d, threaded, False)
    for shard in shards:
        index.add_shard(shard)
    return index


def set_nprobe(index, nprobe: int) -> None:
    """Sets nprobe on every IVF shard of an ``IndexShards`` (or on one IVF index)."""
    parts = [index.at(i) for i in range(index.count())] if isinstance(index, faiss.IndexShards) else [index]
    for part in parts:
        ivf = faiss.try_extract_index_ivf(part)
        if ivf is None:
            raise ValueError(f"nprobe applies to IVF indexes only; this shard is a "
                             f"{type(faiss.downcast_index(part)).__name__}")
        ivf.nprobe = nprobe


def allow_numpy2_arrays() -> None:
    """Lets faiss's RPC layer unpickle numpy 2 arrays (the module docstring says why)."""
    if "numpy.core.multiarray" in rpc.safe_modules:
        rpc.safe_modules.add(NUMPY2_MODULE)


class _Discard:
    """A log file that keeps nothing (the RPC server logs every call)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


class ShardServer(SearchServer):
    """faiss's SearchServer for any index: nprobe only where there is an IVF index, its metric on request."""

    def __init__(self, conn, index):
        rpc.Server.__init__(self, conn, logf=_Discard())
        self.index = index
        self.index_ivf = faiss.try_extract_index_ivf(index)

    def set_nprobe(self, nprobe: int) -> None:
        if self.index_ivf is None:
            raise ValueError(f"nprobe applies to IVF shards only; this shard is a {type(self.index).__name__}")
        self.index_ivf.nprobe = nprobe

    def get_metric_type(self) -> int:
        return int(self.index.metric_type)


class ShardServers:
    """One RPC server per shard, each on its own free port of ``host``, serving in threads until closed.
    A context manager: ``with ShardServers(shards) as servers: servers.client().search(...)``."""

    def __init__(self, shards: list, host: str = "127.0.0.1", timeout_s: float = 30.0):
        allow_numpy2_arrays()
        self.host, self.timeout_s, self._stop = host, timeout_s, threading.Event()
        self._listeners, self._threads, self._conns, self._clients = [], [], [], []
        self._lock = threading.Lock()
        for shard in shards:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind((host, 0))
            listener.listen(8)
            listener.settimeout(ACCEPT_POLL_S)
            self._listeners.append(listener)
            self._start(self._accept_loop, listener, shard)
        self.ports = [listener.getsockname()[1] for listener in self._listeners]

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="dmlbench-shard-server")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket, shard) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:  # closed
                return
            conn.settimeout(None)  # a served connection waits for its client's next call
            with self._lock:
                self._conns.append(conn)
            self._start(ShardServer(conn, shard).exec_loop)

    def client(self) -> "ShardClient":
        """A client connected to every server (closed with the servers)."""
        client = ShardClient([(self.host, port) for port in self.ports], timeout_s=self.timeout_s)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Closes the clients, stops accepting, ends every connection and waits for the threads."""
        for client in self._clients:
            client.close()
        self._stop.set()
        for listener in self._listeners:
            listener.close()
        with self._lock:
            conns, threads = list(self._conns), list(self._threads)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by its client
                pass
            conn.close()
        for thread in threads:
            thread.join(self.timeout_s)
        alive = [t for t in threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"{len(alive)} shard server threads did not stop within {self.timeout_s} s")

    def __enter__(self) -> "ShardServers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ShardClient(ClientIndex):
    """faiss.contrib.client_server's ClientIndex with a timeout on every socket and a merge that keeps
    the best scores of the servers' metric (largest inner products, smallest L2 distances)."""

    def __init__(self, machine_ports: list[tuple[str, int]], timeout_s: float = 30.0):
        allow_numpy2_arrays()
        self.sub_indexes = []
        for host, port in machine_ports:
            connection = socket.create_connection((host, port), timeout=timeout_s)
            client = rpc.Client.__new__(rpc.Client)  # rpc.Client over a connection that has a timeout
            client.sock, client.fs = connection, rpc.FileSock(connection)
            self.sub_indexes.append(client)
        self.ni, self.verbose = len(self.sub_indexes), False
        self.pool = ThreadPool(self.ni)
        try:
            self.ntotal = self.get_ntotal()
            metrics = set(self.pool.map(lambda sub: sub.get_metric_type(), self.sub_indexes))
        except (OSError, rpc.ServerException) as error:
            self.close()
            raise ConnectionError(f"shard servers {machine_ports} did not answer within {timeout_s} s: {error}") from error
        if len(metrics) != 1:
            self.close()
            raise ValueError(f"the shards rank by different metrics {sorted(metrics)}; their answers cannot be merged")
        self.metric_type = metrics.pop()

    def search(self, x, k: int):
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        heap = faiss.ResultHeap(x.shape[0], k, keep_max=self.metric_type == faiss.METRIC_INNER_PRODUCT)
        for distances, ids in self.pool.imap(lambda sub: sub.search(x, k), self.sub_indexes):
            heap.add_result(distances, ids)
        heap.finalize()
        return heap.D, heap.I

    def close(self) -> None:
        """Ends the connections (each server's thread for it ends too) and the thread pool."""
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
        for sub in self.sub_indexes:
            sub.sock.close()
