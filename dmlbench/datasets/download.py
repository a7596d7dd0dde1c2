"""Downloading and unpacking the official archives of the photo benchmarks.

``download_dataset(name, root)`` fetches every archive of a dataset (its class's ``archives``, with
their URLs and MD5 sums) into ``root/downloads``, checks each against its MD5 sum, unpacks it into
``root`` and returns the folder that holds the official layout (what :func:`.layouts.read_layout`
reads): ``root / download_subfolder`` of the dataset's class (``root/CUB_200_2011`` for CUB, ``root``
for Cars196, ``root/Stanford_Online_Products`` for SOP, ``root`` for In-Shop). In-Shop is served
from Google Drive only, which cannot be fetched without a browser: its ``manual_steps``
(:data:`MANUAL_STEPS`) say which files to fetch by hand and where to put them.

- :func:`fetch` streams one URL (http, https, ftp or file) to ``<destination>.part`` while computing
  the MD5 sum, and moves it into place only when the sum matches; a file already in place with the
  right sum is not downloaded again.
- :func:`unpack` extracts a .tgz / .tar.gz / .tar / .zip archive, refusing any member that would
  land outside the target folder, into a temporary folder first, moving each top-level entry into
  place afterwards and writing a marker file last, so an interrupted unpack leaves nothing
  half-extracted under the final names and a finished one is not repeated.

A mirror replaces the directory part of a dataset's URLs: ``$DMLBENCH_<NAME>_URL`` (for instance
``DMLBENCH_CUB_URL=https://mirror.example/datasets/``) or the ``base_url`` argument, which wins.
"""

from __future__ import annotations

import glob
import hashlib
import http.client
import json
import logging
import os
import posixpath
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetNotFoundError
from ..fileio import atomic_write_json
from .base import DATASETS, DatasetFacts

log = logging.getLogger("dmlbench")

CHUNK = 1 << 20  # bytes read and hashed at a time
DOWNLOADS = "downloads"  # the sub-folder of a dataset root that keeps the downloaded archives


class DownloadError(DatasetNotFoundError):
    """A dataset file could not be downloaded or did not match its MD5 sum; the message says what to do."""


class UnpackError(DownloadError):
    """An archive is damaged, or holds a member that would land outside the target folder."""


@dataclass(frozen=True)
class Archive:
    url: str  # where the official file is published
    filename: str  # its name on disk (in root/downloads for archives, in root for plain files)
    md5: str | None  # the published MD5 sum; None where none could be confirmed
    contains: str  # what it holds, for messages
    mirrors: tuple[str, ...] = ()  # the same file (the same MD5 sum) at other URLs, tried in order when url fails

    @property
    def is_archive(self) -> bool:
        """Whether the file is unpacked (a tar or zip archive) rather than used as it is."""
        return _archive_kind(self.filename) is not None


# The facts are the dataset classes' (cub.py, cars196.py, sop.py, inshop.py); these are live views of them.
ARCHIVES = DatasetFacts("archives", convert=list)  # name -> [Archive]: what is downloaded, with URLs and MD5 sums
MANUAL_STEPS = DatasetFacts("manual_steps")  # name -> how to fetch by hand what cannot be downloaded


def _check_name(name: str) -> None:
    if name not in ARCHIVES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(ARCHIVES)}")


def layout_folder(name: str, root: str | os.PathLike) -> Path:
    """The folder under ``root`` that holds ``name``'s official layout once downloaded (nothing is fetched)."""
    _check_name(name)
    root = Path(root).expanduser()
    subfolder = DATASETS.get(name).download_subfolder
    return root / subfolder if subfolder else root


def mirror_env(name: str) -> str:
    """The environment variable that names a mirror for ``name``, e.g. ``DMLBENCH_CUB_URL``."""
    return f"DMLBENCH_{re.sub(r'[^A-Za-z0-9]', '_', name).upper()}_URL"


def source_urls(name: str, base_url: str | None = None) -> list[tuple[Archive, str]]:
    """Each archive of ``name`` with the URL it is fetched from.

    ``base_url`` (or, when it is None, ``$DMLBENCH_<NAME>_URL``) replaces the directory part of
    every URL: the file name is appended to it.
    """
    _check_name(name)
    base = base_url if base_url is not None else os.environ.get(mirror_env(name)) or None
    if base is None:
        return [(archive, archive.url) for archive in ARCHIVES[name]]
    # a mirror named by the user replaces every URL, the archives' own mirrors included
    return [(archive, base.rstrip("/") + "/" + archive.filename) for archive in ARCHIVES[name]]


def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(url: str, destination: str | os.PathLike, md5: str | None, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``destination`` unless it is there already, checking its MD5 sum.

    An existing ``destination`` is kept when ``md5`` is None or matches it. Otherwise the file is
    streamed to ``<destination>.part`` and moved into place only if its MD5 sum is ``md5``; a
    mismatch deletes the part file and raises :class:`DownloadError` with both sums. Where ``md5``
    is None the sum is logged, with a warning that it could not be checked. A network error (or a
    truncated transfer) raises :class:`DownloadError` naming the URL and where to put a copy
    downloaded by hand.
    """
    destination = Path(destination)
    expected = md5.lower() if md5 else None
    if _already_there(url, destination, expected):
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    got = _stream(url, part, destination, timeout)
    if expected is None:
        log.warning("%s: no published MD5 sum to check the download against; its MD5 is %s (not checked)", url, got)
    elif got != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: the downloaded file has MD5 {got}, but the published sum is {expected}; the file was "
            f"discarded (the download is damaged, or the server serves a different file). Try again, or "
            f"download it by hand and put it at {destination}.")
    else:
        log.info("%s: MD5 %s checked", url, got)
    os.replace(part, destination)
    return destination


def _already_there(url: str, destination: Path, expected: str | None) -> bool:
    """Whether ``destination`` exists with the expected MD5 sum (or with no sum to check)."""
    if not destination.is_file():
        return False
    if expected is None:
        log.info("%s is there already (no MD5 sum to check it against)", destination)
        return True
    found = file_md5(destination)
    if found == expected:
        log.info("%s is there already (MD5 %s checked)", destination, found)
        return True
    log.warning("%s has MD5 %s, not the published %s: downloading it again from %s",
                destination, found, expected, url)
    return False


def _stream(url: str, part: Path, destination: Path, timeout: float) -> str:
    """Stream ``url`` into ``part``, returning its MD5 sum; DownloadError (the part file removed) on failure."""
    digest = hashlib.md5()
    received = 0
    length = None
    log.info("downloading %s to %s", url, destination)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as out:
            length = response.headers.get("Content-Length") if response.headers else None
            while chunk := response.read(CHUNK):
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        if length is not None and length.strip().isdigit() and received != int(length):
            raise http.client.IncompleteRead(b"", int(length) - received)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        part.unlink(missing_ok=True)
        if isinstance(error, http.client.IncompleteRead):
            what = f"the transfer was cut short ({received} of {length} bytes received)"
        else:
            what = f"{type(error).__name__}: {error}"
        raise DownloadError(
            f"could not download {url}: {what}. Download it by hand (a browser, wget or curl) and put it at "
            f"{destination}; it is then used as it is (after the MD5 check). A mirror can be named with "
            f"the environment variable DMLBENCH_<DATASET>_URL.") from error
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return digest.hexdigest()


def _archive_kind(filename: str) -> str | None:
    lower = filename.lower()
    if lower.endswith((".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
        return "tar"
    if lower.endswith(".zip"):
        return "zip"
    return None


def _marker(archive: Path, into: Path) -> Path:
    return into / f".{archive.name}.unpacked"


def unpacked_entries(archive: str | os.PathLike, into: str | os.PathLike) -> list[str] | None:
    """The top-level names an earlier :func:`unpack` of ``archive`` put into ``into``, if it finished.

    None when there is no marker, it is unreadable, an entry is gone, or the archive (where it still
    exists) has a different size than the one unpacked.
    """
    archive, into = Path(archive), Path(into)
    try:
        with open(_marker(archive, into), encoding="utf-8") as handle:
            record = json.load(handle)
        entries = [str(e) for e in record["entries"]]
        size = int(record["size"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all((into / entry).exists() or (into / entry).is_symlink() for entry in entries):
        return None
    if archive.is_file() and archive.stat().st_size != size:
        return None
    return entries


def _unsafe_path(name: str) -> str | None:
    """Why a member name would land outside the target folder, or None if it stays inside."""
    normal = name.replace("\\", "/")
    if normal.startswith("/") or re.match(r"^[A-Za-z]:", normal):
        return "it has an absolute path"
    if ".." in normal.split("/"):
        return "its path climbs out with '..'"
    return None


def _escapes(link: str) -> bool:
    """Whether a link target, given relative to the target folder, points outside it."""
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        return True
    resolved = posixpath.normpath(link)
    return resolved == ".." or resolved.startswith("../")


def _unsafe_tar_member(member: tarfile.TarInfo) -> str | None:
    reason = _unsafe_path(member.name)
    if reason:
        return reason
    link = member.linkname.replace("\\", "/")
    if member.issym() and _escapes(posixpath.join(posixpath.dirname(member.name.replace("\\", "/")), link)):
        return f"it is a symbolic link pointing outside the target folder ({member.linkname})"
    if member.islnk() and _escapes(link):
        return f"it is a hard link pointing outside the target folder ({member.linkname})"
    if not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        return "it is a special file (device, pipe or socket)"
    return None


def _refuse(archive: Path, member: str, reason: str) -> UnpackError:
    return UnpackError(f"{archive}: refused to unpack member {member!r}: {reason}. Nothing from this archive "
                       f"was unpacked; it is damaged or was not made for this purpose, so delete it and download "
                       f"it again.")


def _extract_tar(archive: Path, target: Path) -> None:
    with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: one pass, each member checked first
            def check(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
                reason = _unsafe_tar_member(member)
                if reason:
                    raise _refuse(archive, member.name, reason)
                try:
                    return tarfile.data_filter(member, path)
                except tarfile.FilterError as error:
                    raise _refuse(archive, member.name, str(error)) from None

            tar.extractall(target, filter=check)
        else:  # older Pythons: check every member before extracting any
            members = tar.getmembers()
            for member in members:
                reason = _unsafe_tar_member(member)
                if reason:
                    raise _refuse(archive, member.name, reason)
            tar.extractall(target, members=members)


def _extract_zip(archive: Path, target: Path) -> None:
    with zipfile.ZipFile(archive) as zipped:
        infos = zipped.infolist()
        for info in infos:
            reason = _unsafe_path(info.filename)
            if reason:
                raise _refuse(archive, info.filename, reason)
        zipped.extractall(target, members=infos)  # zipfile writes links as plain files, never as links


def unpack(archive: str | os.PathLike, into: str | os.PathLike) -> list[str]:
    """Extract ``archive`` (.tgz, .tar.gz, .tar or .zip) into ``into``; returns its top-level names.

    Members are extracted into a temporary folder inside ``into`` and each top-level entry is then
    moved into place (replacing an older entry of that name); a marker file, written last, makes a
    second call return at once. A member with an absolute path, a '..' component or a link pointing
    outside ``into`` raises :class:`UnpackError` naming it, and nothing is unpacked.
    """
    archive, into = Path(archive), Path(into)
    done = unpacked_entries(archive, into)
    if done is not None:
        log.info("%s was unpacked into %s already", archive.name, into)
        return done
    kind = _archive_kind(archive.name)
    if kind is None:
        raise ValueError(f"{archive}: not an archive this can unpack (.tgz, .tar.gz, .tar or .zip)")
    if not archive.is_file():
        raise DownloadError(f"{archive}: the archive to unpack is missing")
    into.mkdir(parents=True, exist_ok=True)
    with _locked(into / f".{archive.name}.lock"):  # one unpack of an archive into a folder at a time
        done = unpacked_entries(archive, into)
        if done is not None:  # another process finished it while this one waited
            return done
        for stale in into.glob(f".{glob.escape(archive.name)}.*.unpacking"):  # left by an unpack that was killed
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".unpacking", dir=into))
        try:
            return _unpack_via(staging, archive, kind, into)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _unpack_via(staging: Path, archive: Path, kind: str, into: Path) -> list[str]:
    log.info("unpacking %s into %s", archive, into)
    extracted = staging / "content"
    extracted.mkdir()
    try:
        (_extract_tar if kind == "tar" else _extract_zip)(archive, extracted)
    except UnpackError:
        raise
    except (tarfile.TarError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, OSError) as error:
        raise UnpackError(f"could not unpack {archive}: {type(error).__name__}: {error}. The archive is "
                          f"probably damaged: delete it and download it again.") from error
    entries = sorted(os.listdir(extracted))
    if not entries:
        raise UnpackError(f"{archive} is empty: delete it and download it again")
    replaced = staging / "replaced"
    replaced.mkdir()
    for entry in entries:  # each rename is atomic: an entry under its final name is always complete
        target = into / entry
        if target.exists() or target.is_symlink():
            log.info("replacing %s with the copy in %s", target, archive.name)
            os.replace(target, replaced / entry)
        os.replace(extracted / entry, target)
    atomic_write_json(_marker(archive, into), {"archive": archive.name, "size": archive.stat().st_size,
                                               "entries": entries})
    return entries


@contextmanager
def _locked(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _layout_paths(name: str, root: Path) -> list[Path]:
    """The layout's index file (its first marker) and the further paths its class names (Cars196: car_ims/)."""
    cls = DATASETS.get(name)
    return [layout_folder(name, root) / cls.markers[0]] + [root / path for path in cls.download_needs]


def _layout_present(name: str, root: Path) -> bool:
    return all(p.exists() for p in _layout_paths(name, root))


def _fetch_any(name: str, urls: list[str], destination: Path, md5: str | None, root: Path) -> Path:
    """``destination`` fetched from the first of ``urls`` that serves it with its MD5 sum; else one
    DownloadError naming every URL tried and why, and the dataset's alternatives."""
    failures = []
    for url in urls:
        try:
            return fetch(url, destination, md5)
        except DownloadError as error:
            failures.append(str(error).split(". Download it by hand")[0])
            if len(urls) > 1:
                log.warning("%s", failures[-1])
    alternatives = getattr(DATASETS.get(name), "download_alternatives", None)
    tried = " Also tried: " + "; ".join(failures[1:]) + "." if len(failures) > 1 else ""
    raise DownloadError(f"{failures[0]}.{tried} Download it by hand (a browser, wget or curl) and put it at "
                        f"{destination}; it is then used as it is (after the MD5 check). A mirror can be named with "
                        f"the environment variable {mirror_env(name)}."
                        + (f" {alternatives.replace('ROOT', str(root))}" if alternatives else ""))


def download_dataset(name: str, root: str | os.PathLike, *, base_url: str | None = None) -> Path:
    """Download, check and unpack dataset ``name`` under ``root``; returns its layout folder.

    Archives go to ``root/downloads`` and are unpacked into ``root``; plain files (Cars196's
    ``cars_annos.mat``) go to ``root`` itself. What is there already (a checked file, a finished
    unpack) is not fetched again, so the archives may be deleted after a successful call. In-Shop
    cannot be downloaded: a :class:`DownloadError` gives :data:`MANUAL_STEPS` unless the files are
    in place already (a dataset without archives: its class's ``fetch_by_hand``).
    """
    _check_name(name)
    root = Path(root).expanduser()
    if not ARCHIVES[name]:
        return DATASETS.get(name).fetch_by_hand(root)
    folder = layout_folder(name, root)
    if _layout_present(name, root):
        log.info("%s: the official layout is in %s already; nothing downloaded", name, folder)
        return folder
    downloads = root / DOWNLOADS
    for archive, url in source_urls(name, base_url):
        urls = [url] + ([] if base_url or os.environ.get(mirror_env(name)) else list(archive.mirrors))
        if archive.is_archive:
            path = downloads / archive.filename
            if unpacked_entries(path, root) is not None:
                log.info("%s: %s was downloaded and unpacked already", name, archive.filename)
                continue
            unpack(_fetch_any(name, urls, path, archive.md5, root), root)
        else:
            _fetch_any(name, urls, root / archive.filename, archive.md5, root)
    if not _layout_present(name, root):
        missing = [str(p) for p in _layout_paths(name, root) if not p.exists()]
        raise DownloadError(f"{name}: the files were downloaded and unpacked into {root}, but "
                            f"{', '.join(missing)} is missing; they are not the expected ones "
                            f"(delete {downloads} and run again).")
    return folder
