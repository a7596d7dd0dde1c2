"""Atomic writes keep the file modes a user expects, and write only what changed."""

from __future__ import annotations

import os
import stat

import pytest

from dmlbench.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, write_if_changed


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_a_new_file_gets_the_mode_of_open_under_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    for write in (lambda p: atomic_write_bytes(p, b"x"), lambda p: atomic_write_text(p, "x"),
                  lambda p: atomic_write_json(p, {"a": 1})):
        path = tmp_path / f"new-{mask:o}"
        write(path)
        assert mode(path) == expected
        with open(tmp_path / "plain", "w"):
            pass
        assert mode(path) == mode(tmp_path / "plain")
        path.unlink()
        (tmp_path / "plain").unlink()


def test_a_rewritten_file_keeps_the_replaced_files_mode(tmp_path, umask):
    umask(0o077)
    path = tmp_path / "shared.json"
    path.write_text("{}")
    os.chmod(path, 0o664)
    atomic_write_json(path, {"b": 2})
    assert mode(path) == 0o664
    assert path.read_text() == '{\n  "b": 2\n}\n'
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_if_changed_leaves_an_equal_file_untouched(tmp_path):
    path = tmp_path / "table.csv"
    assert write_if_changed(path, "a,b\n1,2\n") is True
    before = os.stat(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns - 10**9))
    stamped = os.stat(path).st_mtime_ns
    assert write_if_changed(path, b"a,b\n1,2\n") is False
    assert os.stat(path).st_mtime_ns == stamped
    assert write_if_changed(path, "a,b\n1,3\n") is True
    assert path.read_text() == "a,b\n1,3\n"


def test_compact_json_is_one_line_with_the_same_content(tmp_path):
    from dmlbench.fileio import atomic_write_json, read_json

    record = {"test": {"map@r": 0.5, "recall@1": 0.75}, "classes": list(range(50)), "name": "α"}
    atomic_write_json(tmp_path / "wide.json", record)
    atomic_write_json(tmp_path / "compact.json", record, compact=True)
    assert read_json(tmp_path / "wide.json") == read_json(tmp_path / "compact.json") == record
    assert len((tmp_path / "compact.json").read_text().splitlines()) == 1
    assert (tmp_path / "compact.json").stat().st_size < (tmp_path / "wide.json").stat().st_size / 2
