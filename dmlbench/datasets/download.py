"""Downloading and unpacking the official archives of the four real DML benchmarks.

``download_dataset(name, root)`` fetches every archive of a dataset into ``root/downloads``, checks
each against its MD5 sum, unpacks it into ``root`` and returns the folder that holds the official
layout (what :func:`.layouts.read_layout` reads): ``root/CUB_200_2011`` for CUB, ``root`` for Cars196
(``car_ims/`` and ``cars_annos.mat``), ``root/Stanford_Online_Products`` for SOP and ``root`` for
In-Shop. In-Shop is served from Google Drive only, which cannot be fetched without a browser: its
:data:`MANUAL_STEPS` say which files to fetch by hand and where to put them.

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

    @property
    def is_archive(self) -> bool:
        """Whether the file is unpacked (a tar or zip archive) rather than used as it is."""
        return _archive_kind(self.filename) is not None


# Each MD5 sum below was checked against public code that downloads the same file and verifies it:
# - CUB_200_2011.tgz: the CUB200 classes of KevinMusgrave/powerful-benchmarker
#   (src/powerful_benchmarker/datasets/cub200.py) and of ContinualAI/avalanche
#   (avalanche/benchmarks/datasets/cub200/cub200.py) check the same sum.
# - car_ims.tgz and cars_annos.mat: KevinMusgrave/powerful-benchmarker
#   (src/powerful_benchmarker/datasets/cars196.py) checks both, fetched from the same
#   ai.stanford.edu/~jkrause/car196/ folder used here.
# - Stanford_Online_Products.zip: KevinMusgrave/powerful-benchmarker
#   (src/powerful_benchmarker/datasets/stanford_online_products.py) checks it, fetched from the same
#   cs.stanford.edu FTP address used here.
ARCHIVES: dict[str, list[Archive]] = {
    "cub": [
        Archive("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz", "CUB_200_2011.tgz",
                "97eceeb196236b17998738112f37df78",
                "CUB-200-2011: CUB_200_2011/ with images/, images.txt, image_class_labels.txt, classes.txt"),
    ],
    "cars196": [
        Archive("http://ai.stanford.edu/~jkrause/car196/car_ims.tgz", "car_ims.tgz",
                "d5c8f0aa497503f355e17dc7886c3f14", "Cars196 images: car_ims/ with 16,185 JPEG files"),
        Archive("http://ai.stanford.edu/~jkrause/car196/cars_annos.mat", "cars_annos.mat",
                "b407c6086d669747186bd1d764ff9dbc", "Cars196 annotations: class and path of every image"),
    ],
    "sop": [
        Archive("ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip", "Stanford_Online_Products.zip",
                "7f73d41a2f44250d4779881525aea32e",
                "Stanford Online Products: Stanford_Online_Products/ with Ebay_train.txt, Ebay_test.txt and "
                "the images"),
    ],
    "inshop": [],  # Google Drive only: see MANUAL_STEPS
}

INSHOP_PAGE = "https://mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html"
MANUAL_STEPS: dict[str, str] = {
    "inshop": (
        "In-Shop Clothes Retrieval (DeepFashion) is distributed through Google Drive only and cannot be "
        f"downloaded automatically. Open {INSHOP_PAGE}, follow its download link (Google Drive, 'In-shop Clothes "
        "Retrieval Benchmark'), and fetch two files: 'Img/img.zip' (the images) and "
        "'Eval/list_eval_partition.txt' (the train / query / gallery split). Put them into the dataset root "
        "ROOT: either img.zip into ROOT/downloads/ (it is then unpacked for you) or unpack img.zip yourself so "
        "that ROOT/img/ holds the category folders (ROOT/img/WOMEN/..., ROOT/img/MEN/...); and "
        "list_eval_partition.txt as ROOT/list_eval_partition.txt (or ROOT/Eval/list_eval_partition.txt). "
        "Then run the same command again."
    ),
}

# The folder (relative to the root) that holds a dataset's official layout, and a file that proves it is there.
LAYOUT_SUBFOLDER = {"cub": "CUB_200_2011", "cars196": "", "sop": "Stanford_Online_Products", "inshop": ""}
LAYOUT_FILE = {"cub": "images.txt", "cars196": "cars_annos.mat", "sop": "Ebay_train.txt",
               "inshop": "list_eval_partition.txt"}


def _check_name(name: str) -> None:
    if name not in ARCHIVES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {sorted(ARCHIVES)}")


def layout_folder(name: str, root: str | os.PathLike) -> Path:
    """The folder under ``root`` that holds ``name``'s official layout once downloaded (nothing is fetched)."""
    _check_name(name)
    root = Path(root).expanduser()
    return root / LAYOUT_SUBFOLDER[name] if LAYOUT_SUBFOLDER[name] else root


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
    if destination.is_file():
        if expected is None:
            log.info("%s is there already (no MD5 sum to check it against)", destination)
            return destination
        found = file_md5(destination)
        if found == expected:
            log.info("%s is there already (MD5 %s checked)", destination, found)
            return destination
        log.warning("%s has MD5 %s, not the published %s: downloading it again from %s",
                    destination, found, expected, url)
    destination.parent.mkdir(parents=True, exist_ok=True)
    part = destination.with_name(destination.name + ".part")
    digest = hashlib.md5()
    received = 0
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
    got = digest.hexdigest()
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
    """The layout's index file (and, for Cars196, the image folder)."""
    paths = [layout_folder(name, root) / LAYOUT_FILE[name]]
    return paths + [root / "car_ims"] if name == "cars196" else paths


def _layout_present(name: str, root: Path) -> bool:
    return all(p.exists() for p in _layout_paths(name, root))


def _inshop(root: Path) -> Path:
    """In-Shop from files the user fetched by hand: unpack ROOT/downloads/img.zip if there, check the rest."""
    img_zip = root / DOWNLOADS / "img.zip"
    if img_zip.is_file():
        unpack(img_zip, root)
    partition = [root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt"]
    if (root / "img").is_dir() and any(p.is_file() for p in partition):
        return root
    missing = [str(root / "img") + "/"] if not (root / "img").is_dir() else []
    if not any(p.is_file() for p in partition):
        missing.append(str(partition[0]))
    raise DownloadError(f"inshop: {', '.join(missing)} missing. "
                        + MANUAL_STEPS["inshop"].replace("ROOT", str(root)))


def download_dataset(name: str, root: str | os.PathLike, *, base_url: str | None = None) -> Path:
    """Download, check and unpack dataset ``name`` under ``root``; returns its layout folder.

    Archives go to ``root/downloads`` and are unpacked into ``root``; plain files (Cars196's
    ``cars_annos.mat``) go to ``root`` itself. What is there already (a checked file, a finished
    unpack) is not fetched again, so the archives may be deleted after a successful call. In-Shop
    cannot be downloaded: a :class:`DownloadError` gives :data:`MANUAL_STEPS` unless the files are
    in place already.
    """
    _check_name(name)
    root = Path(root).expanduser()
    if name == "inshop":
        return _inshop(root)
    folder = layout_folder(name, root)
    if _layout_present(name, root):
        log.info("%s: the official layout is in %s already; nothing downloaded", name, folder)
        return folder
    downloads = root / DOWNLOADS
    for archive, url in source_urls(name, base_url):
        if archive.is_archive:
            path = downloads / archive.filename
            if unpacked_entries(path, root) is not None:
                log.info("%s: %s was downloaded and unpacked already", name, archive.filename)
                continue
            unpack(fetch(url, path, archive.md5), root)
        else:
            fetch(url, root / archive.filename, archive.md5)
    if not _layout_present(name, root):
        missing = [str(p) for p in _layout_paths(name, root) if not p.exists()]
        raise DownloadError(f"{name}: the files were downloaded and unpacked into {root}, but "
                            f"{', '.join(missing)} is missing; they are not the expected ones "
                            f"(delete {downloads} and run again).")
    return folder
