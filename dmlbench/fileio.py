"""Atomic file writes: a reader sees the old file or the whole new one, never half of it.

A rewritten file keeps the mode of the file it replaces; a new file gets the mode ``open()`` would
give it (0666 less the umask), so shared results folders stay readable by the group.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """The replaced file's permission bits, or those a plain ``open(path, "w")`` would create."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as handle:
            view, done = memoryview(data), 0
            while done < len(view):  # the OS's own writes (a full disk fails one of them: ENOSPC)
                done += os.write(handle.fileno(), view[done:])
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` of ``obj``, atomically (serialised in memory, then written and renamed)."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_if_changed(path: str | os.PathLike, data: bytes | str) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it (its bytes, mode and
    modification time are then left alone, so a rerun with nothing new changes no file). Returns
    whether it wrote."""
    data = data.encode("utf-8") if isinstance(data, str) else data
    path = Path(path)
    try:
        if path.read_bytes() == data:
            return False
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        pass
    atomic_write_bytes(path, data)
    return True


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: store them as null rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike, obj: Any, compact: bool = False) -> None:
    """``obj`` as JSON, indented, or on one line with ``compact`` (a run's record: about half the bytes)."""
    text = json.dumps(_finite(obj), separators=(",", ":")) if compact else json.dumps(_finite(obj), indent=2)
    atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read a MiB at a time."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


PNG_COLOURS = 64  # a palette of this many colours keeps a plot's lines, markers and glyphs apart


def compact_png(data: bytes, colours: int = PNG_COLOURS) -> bytes:
    """A PNG as an indexed-colour image of at most ``colours`` colours (median cut, no dithering, on
    white where it was transparent): plots and glyph grids look the same at about 40% of the bytes.
    Deterministic, and the identity on an image that is indexed already, so compacting twice is
    compacting once (an executed notebook may be compacted again safely)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(data))
    if image.mode == "P":
        return data
    if image.mode in ("RGBA", "LA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    palette = image.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT,
                                            dither=Image.Dither.NONE)
    out = io.BytesIO()
    palette.save(out, format="PNG", optimize=True)
    return out.getvalue() if out.tell() < len(data) else data


def set_aside(path: str | os.PathLike) -> Path:
    """Rename a damaged file or folder to ``<name>.damaged-<UTC time>`` beside it, so it is kept for a
    look but no longer read; returns its new path."""
    import time

    path = Path(path)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    serial = 1
    while target.exists():  # two set asides in one second keep both
        serial += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{serial}")
    os.replace(path, target)
    return target


def read_or_set_aside(path: str | os.PathLike, reader, what: str, log=None) -> Any:
    """``reader(path)`` of a cache dmlbench wrote; where it is damaged (the reader raises a reading error
    or ``ValueError``), the file is set aside, a warning names it, and None is returned: the caller
    rebuilds it."""
    import logging
    import zipfile
    import zlib

    try:
        return reader(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        moved = set_aside(path)
        (log or logging.getLogger("dmlbench")).warning(
            "%s: damaged %s (%s: %s); set aside as %s and rebuilt", path, what, type(error).__name__,
            " ".join(str(error).split()), moved.name)
        return None


DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device; the user's quota spent


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` is an OSError saying the disk or the quota is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL


def size_text(size: float) -> str:
    """Bytes as a reader reads them: '3.2 MiB', '812 KiB'."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return ""


def disk_full_error(folder: str | os.PathLike, needed: float | None = None, what: str = "") -> Exception:
    """The one-line error for a full disk while writing into ``folder``: where, about how much more
    space (``needed`` bytes; ``what`` says what that estimate is), and how to go on."""
    from .errors import DiskFullError

    try:
        free = f"; {size_text(shutil.disk_usage(folder).free)} free there now"
    except OSError:
        free = ""
    more = f"; about {size_text(needed)} more is needed{f' ({what})' if what else ''}" if needed else ""
    return DiskFullError(f"{folder}: the disk is full (no space left on the device, or the quota is spent){free}"
                         f"{more}. Free space there and rerun the same command: finished cells are kept and "
                         f"only the unfinished ones run again")
