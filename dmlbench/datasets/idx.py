"""The IDX file format of (Fashion-)MNIST: a big-endian header, then raw array data.

Header: two zero bytes, a type code (0x08 = uint8), the number of dimensions n, then n big-endian
uint32 sizes. Files may be gzip-compressed (``.gz``), as the official release ships them.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {np.dtype(np.uint8): 0x08}


class IDXFormatError(ValueError):
    """An IDX file that cannot be read, or is not whole; ``path`` names it."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = path


def _open(path: str | os.PathLike):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX (optionally gzipped) file into a numpy array."""
    try:
        with _open(path) as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # a damaged .gz: bad header, stream cut short or garbled
        raise IDXFormatError(f"{path}: cannot read: {error}", path) from error
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXFormatError(f"{path}: not an IDX file (bad magic number)", path)
    type_code, ndim = data[2], data[3]
    if type_code not in _TYPES:
        raise IDXFormatError(f"{path}: unknown IDX type code 0x{type_code:02x}", path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXFormatError(f"{path}: truncated IDX header", path)
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_TYPES[type_code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise IDXFormatError(f"{path}: header says shape {shape} ({expected} bytes) but {len(data) - header} bytes follow", path)
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array)
    if array.dtype not in _CODES:
        raise IDXFormatError(f"write_idx supports uint8 arrays, got {array.dtype}")
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(header + array.tobytes())
