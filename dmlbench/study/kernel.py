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
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from jupyter_client.manager import AsyncKernelManager
from traitlets import default

KERNEL = "python3"
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
    kernel's shutdown chatter never reaches the terminal. Without ``kernel_log`` it goes to stderr."""
    import papermill

    def run(manager: type[AsyncKernelManager]) -> None:
        papermill.execute_notebook(str(template), str(output), parameters=parameters, kernel_name=KERNEL,
                                   cwd=str(Path(cwd)), log_output=log_output,
                                   progress_bar={"desc": progress, "file": sys.stderr} if progress else False,
                                   kernel_manager_class=manager)

    with _quiet_interrupt():
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
                    Path(kernel_log).write_bytes(text)
                raise


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
