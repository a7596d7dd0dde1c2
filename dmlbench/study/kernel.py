"""Notebook executions on a local kernel that talks over Unix sockets, not TCP.

papermill starts a Jupyter kernel per notebook. Over TCP, ipykernel warns on every start that the
traffic is unencrypted (and any local user could connect to the ports); over IPC the sockets are
files in a private temporary folder, so nothing is exposed and nothing is printed::

    from dmlbench.study.kernel import execute_notebook
    execute_notebook(template, output, parameters={...}, cwd=REPO_ROOT)
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Iterator

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

from ..fileio import atomic_write_text, disk_full_error, is_disk_full

KERNEL = "python3"
# glibc's allocator settings for the kernels (read once, when a process starts). By default it hands blocks
# of more than 128 KiB back to the system when freed and takes fresh ones for the next step, which the
# kernel then faults in and zeroes page by page: a training step's activations, every step. Keeping the
# freed memory halves a cell's page faults; what is computed does not change. Settings already in the
# environment win.
ALLOCATOR_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
# A Unix socket path holds at most 107 bytes; jupyter_client appends "-<port>" to the prefix.
MAX_SOCKET_PREFIX = 90


class IPCKernelManager(AsyncKernelManager):
    """A kernel manager whose kernels listen on Unix sockets in a private folder (mode 0700)."""

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    @default("ip")
    def _default_ip(self) -> str:
        folder = tempfile.mkdtemp(prefix="dmlbench-kernel-")  # 0700: only this user reaches the sockets
        self._socket_folder = folder
        return os.path.join(folder, "k")

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        folder = getattr(self, "_socket_folder", None)
        if folder and not restart:
            shutil.rmtree(folder, ignore_errors=True)


def kernel_manager_class(stderr=None) -> type[AsyncKernelManager]:
    """IPC where the temporary folder's path leaves room for a socket name, else the default (TCP);
    ``stderr``, a file, receives the kernel process's own output (ipykernel's log, native crashes)."""
    if len(os.path.join(tempfile.gettempdir(), "dmlbench-kernel-XXXXXXXX", "k-65535")) > MAX_SOCKET_PREFIX:
        base = AsyncKernelManager
    else:
        base = IPCKernelManager
    if stderr is None:
        return base

    class Manager(base):
        async def _async_launch_kernel(self, kernel_cmd, **kw):
            return await super()._async_launch_kernel(kernel_cmd, **(kw | {"stdout": stderr, "stderr": stderr}))

    return Manager


def execute_notebook(template: str | os.PathLike, output: str | os.PathLike, *, parameters: dict[str, Any],
                     cwd: str | os.PathLike, log_output: bool = False, kernel_log: str | os.PathLike | None = None,
                     progress: str | None = None) -> None:
    """papermill's execution of ``template`` into ``output`` with ``parameters``, quietly; with
    ``progress``, a bar of the cells executed on stderr labelled with it (never in the notebook).

    The kernel process's own output (not the cells': those are in the executed notebook) is kept in
    ``kernel_log`` when the execution fails, and dropped otherwise; a Ctrl-C drops it too, so the
    kernel's shutdown chatter never reaches the terminal. Without ``kernel_log`` it goes to stderr.

    The kernel is stopped at once after the last cell (nbclient's "immediate" shutdown), not asked to
    exit: every output has arrived by then, the run's files are written, and a kernel holding torch
    takes one to three seconds to exit politely, on every cell of a study."""
    import papermill

    def run(manager: type[AsyncKernelManager]) -> None:
        try:
            papermill.execute_notebook(str(template), str(output), parameters=parameters, kernel_name=KERNEL,
                                       cwd=str(Path(cwd)), log_output=log_output,
                                       progress_bar={"desc": progress, "file": sys.stderr} if progress else False,
                                       kernel_manager_class=manager, shutdown_kernel="immediate")
        except Exception:
            if progress:  # the bar closed now (not when the error is dropped): the error's line comes last
                _close_bars(progress)
            raise

    _atomic_notebook_writes()
    # inherited by the kernel process only (this process's environment is put back afterwards): the allocator's
    # settings, and DMLBENCH_UNATTENDED (no one watches: the notebook draws its live figures once, at the end)
    kernel_only = {name: value for name, value in ALLOCATOR_ENVIRONMENT.items() if name not in os.environ}
    kernel_only["DMLBENCH_UNATTENDED"] = "1"
    with _quiet_interrupt(), _disk_full_named(Path(output)), _environment(kernel_only):
        if kernel_log is None:
            run(kernel_manager_class())
            return
        Path(kernel_log).unlink(missing_ok=True)  # an earlier attempt's
        with tempfile.TemporaryFile() as captured:
            try:
                run(kernel_manager_class(captured))
            except Exception:
                captured.seek(0)
                text = captured.read()
                if text:
                    with suppress(OSError):  # a full disk: the error says so, not this log
                        Path(kernel_log).write_bytes(text)
                raise


def _close_bars(label: str) -> None:
    """Close the progress bars labelled ``label`` that papermill left open (it closes them only when
    the notebook completes), ending their line."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        if bar.desc == label:
            bar.close()


@contextmanager
def _quiet_interrupt() -> Iterator[None]:
    """On Ctrl-C, logging is switched off before KeyboardInterrupt unwinds the execution: nbclient
    and asyncio otherwise log the kernel's shutdown ("Kernel died", a task's DeadKernelError) as
    tracebacks, some of them only when the process exits. It stays off: the interrupt ends the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupted(signum, frame):
        logging.disable(logging.CRITICAL)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class AtomicLocalHandler:
    """papermill's handler of local paths, writing each version of the executed notebook atomically
    (a temporary file beside it, synced, then renamed): papermill rewrites the notebook after every
    cell, and a write cut short (a full disk, a crash) would otherwise leave it invalid JSON."""

    def __init__(self, local):
        self.local = local  # papermill's own handler: reads, listings and its working directory

    def __getattr__(self, name: str):
        return getattr(self.local, name)

    def write(self, buf: str, path: str) -> None:
        cwd = getattr(self.local, "_cwd", None)
        target = Path(cwd, path) if cwd else Path(path)
        if not target.parent.is_dir():
            raise FileNotFoundError(f"output folder {target.parent} doesn't exist.")
        try:
            atomic_write_text(target, buf)
        except OSError as error:
            error.bytes_written = len(buf.encode("utf-8"))  # what the disk had no room for
            raise


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    """``values`` in os.environ while the block runs; every variable as it was afterwards."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _atomic_notebook_writes() -> None:
    """papermill's local paths through :class:`AtomicLocalHandler` (once per process)."""
    from papermill.iorw import papermill_io

    handlers = papermill_io._handlers  # (scheme, handler) pairs; paths of no other scheme go to "local"'s
    for position, (scheme, handler) in enumerate(handlers):
        if scheme == "local" and not isinstance(handler, AtomicLocalHandler):
            handlers[position] = (scheme, AtomicLocalHandler(handler))


def _kernel_disk_full(error: BaseException) -> bool:
    """A notebook cell that failed with the disk or the quota full: its OSError, as papermill reports
    it, or any error whose message carries one (a library's wrapper around the failed write)."""
    import errno

    evalue = str(getattr(error, "evalue", "") or "")
    return getattr(error, "ename", None) is not None and any(
        f"[Errno {code}]" in evalue or os.strerror(code) in evalue for code in (errno.ENOSPC, errno.EDQUOT))


def _folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _space_needed(output: Path, error: BaseException) -> tuple[int, str]:
    """About how much more space the execution into ``output`` needs: for a run's notebook, the median
    size of the finished run folders beside its own; else the size of the notebook it replaces; at
    least the bytes of the write that failed."""
    import statistics

    from ..training.rundir import RunDir

    written = int(getattr(error, "bytes_written", 0))
    try:
        if output.name == RunDir.RUNNING_NOTEBOOK:
            sizes = [_folder_size(d) for d in output.parent.parent.iterdir()
                     if d != output.parent and (d / RunDir.NOTEBOOK).is_file() and (d / RunDir.METRICS).is_file()]
            if sizes and statistics.median(sizes) > written:
                return int(statistics.median(sizes)), f"a finished run folder's median size, over {len(sizes)} runs"
        finished = output.with_name(output.name.replace(".running", ""))
        if finished.is_file() and finished.stat().st_size > written:
            return finished.stat().st_size, f"the size of {finished.name}"
    except OSError:
        pass
    return written, "the notebook version being written" if written else ""


@contextmanager
def _disk_full_named(output: Path) -> Iterator[None]:
    """A full disk while the notebook runs (papermill's writes or the notebook's own) as one line: the
    folder, about how much space, how to go on (dmlbench.errors.DiskFullError)."""
    try:
        yield
    except Exception as error:
        if not (is_disk_full(error) or _kernel_disk_full(error)):
            raise
        raise disk_full_error(output.parent, *_space_needed(output, error)) from None
