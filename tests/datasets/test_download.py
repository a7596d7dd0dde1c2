"""Downloading, checking and unpacking the benchmarks' archives, served from a local HTTP server.

The archives are small real .tgz / .zip files written by the tests with the official folder names;
nothing here reaches the datasets' real sites.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import logging
import shutil
import socket
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from dmlbench.datasets import download as dl
from dmlbench.datasets.download import (ARCHIVES, MANUAL_STEPS, Archive, DownloadError, UnpackError,
                                        download_dataset, fetch, layout_folder, source_urls, unpack)
from dmlbench.datasets.layouts import read_layout
from dmlbench.errors import DatasetNotFoundError

from ..support import write_cars, write_cub, write_sop


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        if self.path == "/short":  # promises 1000 bytes, sends 10, hangs up
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            return
        super().do_GET()


@pytest.fixture
def server(tmp_path):
    """A ThreadingHTTPServer on 127.0.0.1 serving a temporary folder; .requests lists the paths asked for."""
    served = tmp_path / "served"
    served.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(served)))
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.folder = served
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def make_tar(path: Path, source: Path) -> Path:
    """A .tgz (or .tar) of every entry of ``source``, under its name relative to ``source``."""
    mode = "w:gz" if path.name.endswith((".tgz", ".tar.gz")) else "w"
    with tarfile.open(path, mode) as tar:
        for entry in sorted(source.iterdir()):
            tar.add(entry, arcname=entry.name)
    return path


def make_zip(path: Path, source: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for file in sorted(source.rglob("*")):
            zipped.write(file, file.relative_to(source).as_posix())
    return path


def tar_of(path: Path, parent: Path, entry: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(parent / entry, arcname=entry)
    return path


def cub_tgz(path: Path) -> Path:
    """A CUB_200_2011.tgz look-alike: CUB_200_2011/ with the three index files and an image, plus attributes.txt."""
    source = path.parent / "cub-source"
    write_cub(source / "CUB_200_2011", per_class=1)
    image = source / "CUB_200_2011" / "images" / "001.Bird_1" / "bird_1_0.jpg"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\xff\xd8 not really a jpeg")
    (source / "attributes.txt").write_text("1 has_bill_shape::curved\n")
    return make_tar(path, source)


def sop_zip(path: Path) -> Path:
    source = path.parent / "sop-source"
    write_sop(source / "Stanford_Online_Products")
    (source / "Stanford_Online_Products" / "bicycle_final").mkdir()
    (source / "Stanford_Online_Products" / "bicycle_final" / "0_0.JPG").write_bytes(b"image")
    return make_zip(path, source)


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/CUB_200_2011.tgz"


def use_archives(monkeypatch, name: str, archives: list[Archive]) -> None:
    monkeypatch.setitem(ARCHIVES, name, archives)


# ---------------------------------------------------------------- fetch


def test_fetch_checks_the_md5_and_the_archive_unpacks(server, tmp_path):
    archive = cub_tgz(server.folder / "CUB_200_2011.tgz")
    destination = tmp_path / "root" / "downloads" / "CUB_200_2011.tgz"
    path = fetch(f"{server.url}/CUB_200_2011.tgz", destination, md5_of(archive))
    assert path == destination and path.read_bytes() == archive.read_bytes()
    assert not destination.with_name("CUB_200_2011.tgz.part").exists()
    entries = unpack(path, tmp_path / "root")
    assert entries == ["CUB_200_2011", "attributes.txt"]
    cub = tmp_path / "root" / "CUB_200_2011"
    assert (cub / "images.txt").is_file() and (cub / "images" / "001.Bird_1" / "bird_1_0.jpg").is_file()
    assert not list((tmp_path / "root").glob("*.unpacking"))


def test_a_wrong_md5_raises_names_both_sums_and_leaves_no_file(server, tmp_path):
    archive = cub_tgz(server.folder / "CUB_200_2011.tgz")
    destination = tmp_path / "downloads" / "CUB_200_2011.tgz"
    wrong = "0" * 32
    with pytest.raises(DownloadError) as caught:
        fetch(f"{server.url}/CUB_200_2011.tgz", destination, wrong)
    message = str(caught.value)
    assert wrong in message and md5_of(archive) in message and f"{server.url}/CUB_200_2011.tgz" in message
    assert isinstance(caught.value, DatasetNotFoundError)
    assert not destination.exists() and not destination.with_name("CUB_200_2011.tgz.part").exists()
    assert list(destination.parent.iterdir()) == []


def test_an_unreachable_url_raises_naming_it_and_where_to_put_the_file(tmp_path):
    url = closed_port_url()
    destination = tmp_path / "downloads" / "CUB_200_2011.tgz"
    with pytest.raises(DownloadError) as caught:
        fetch(url, destination, None, timeout=5)
    message = str(caught.value)
    assert url in message and str(destination) in message and "by hand" in message
    assert not destination.exists() and not destination.with_name("CUB_200_2011.tgz.part").exists()


def test_a_missing_file_on_the_server_raises(server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        fetch(f"{server.url}/nothing.tgz", tmp_path / "nothing.tgz", None)
    assert not (tmp_path / "nothing.tgz").exists() and not (tmp_path / "nothing.tgz.part").exists()


def test_a_truncated_transfer_raises_and_keeps_nothing(server, tmp_path):
    with pytest.raises(DownloadError, match="cut short"):
        fetch(f"{server.url}/short", tmp_path / "short.bin", None)
    assert not (tmp_path / "short.bin").exists() and not (tmp_path / "short.bin.part").exists()


def test_without_a_published_sum_the_computed_md5_is_logged(server, tmp_path, caplog):
    (server.folder / "cars_annos.mat").write_bytes(b"MATLAB 5.0 MAT-file placeholder")
    with caplog.at_level(logging.WARNING, logger="dmlbench"):
        path = fetch(f"{server.url}/cars_annos.mat", tmp_path / "cars_annos.mat", None)
    assert path.read_bytes() == b"MATLAB 5.0 MAT-file placeholder"
    assert md5_of(path) in caplog.text and "not checked" in caplog.text


def test_a_file_in_place_is_not_downloaded_again_unless_its_md5_differs(server, tmp_path):
    archive = sop_zip(server.folder / "Stanford_Online_Products.zip")
    url, destination, md5 = f"{server.url}/Stanford_Online_Products.zip", tmp_path / "sop.zip", md5_of(archive)
    fetch(url, destination, md5)
    fetch(url, destination, md5)
    fetch(url, destination, None)
    assert server.requests == ["/Stanford_Online_Products.zip"]
    destination.write_bytes(b"damaged")
    fetch(url, destination, md5)
    assert len(server.requests) == 2 and md5_of(destination) == md5


def test_file_urls_work(tmp_path):
    archive = sop_zip(tmp_path / "mirror" / "Stanford_Online_Products.zip")
    path = fetch(archive.as_uri(), tmp_path / "downloads" / "sop.zip", md5_of(archive))
    assert path.read_bytes() == archive.read_bytes()
    with pytest.raises(DownloadError, match="missing.zip"):
        fetch((tmp_path / "missing.zip").as_uri(), tmp_path / "downloads" / "missing.zip", None)


# ---------------------------------------------------------------- unpack


def evil_tar(path: Path, kind: str, outside: Path) -> str:
    """A tar with one harmless file and one member that would land outside; returns that member's name."""
    def add(tar, info, data=b""):
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(path, "w:gz") as tar:
        add(tar, tarfile.TarInfo("good/file.txt"), b"fine")
        if kind == "dotdot":
            name = "../evil.txt"
            add(tar, tarfile.TarInfo(name), b"evil")
        elif kind == "absolute":
            name = str(outside / "evil.txt")
            add(tar, tarfile.TarInfo(name), b"evil")
        elif kind == "symlink":
            name = "good/link"
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, "../../../.."
            add(tar, info)
            add(tar, tarfile.TarInfo("good/link/evil.txt"), b"evil")
        else:  # hard link to a file outside
            name = "good/hard"
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.LNKTYPE, "../outside/secret.txt"
            add(tar, info)
    return name


def evil_zip(path: Path, kind: str, outside: Path) -> str:
    name = "../evil.txt" if kind == "dotdot" else str(outside / "evil.txt")
    with zipfile.ZipFile(path, "w") as zipped:
        zipped.writestr("good/file.txt", "fine")
        zipped.writestr(name, "evil")
    return name


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.mark.parametrize("fmt,kind", [("tgz", "dotdot"), ("tgz", "absolute"), ("tgz", "symlink"),
                                      ("tgz", "hardlink"), ("zip", "dotdot"), ("zip", "absolute")])
def test_members_that_would_land_outside_are_refused(tmp_path, fmt, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    archive = tmp_path / f"evil.{fmt}"
    member = (evil_tar if fmt == "tgz" else evil_zip)(archive, kind, outside)
    into = tmp_path / "deep" / "into"
    before = files_under(tmp_path)
    with pytest.raises(UnpackError) as caught:
        unpack(archive, into)
    assert member in str(caught.value)
    assert files_under(tmp_path) - before <= {"deep", "deep/into", "deep/into/.evil.%s.lock" % fmt}
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


def test_unpack_is_idempotent_and_a_changed_archive_is_unpacked_again(tmp_path):
    archive = cub_tgz(tmp_path / "CUB_200_2011.tgz")
    original = archive.read_bytes()
    into = tmp_path / "root"
    assert unpack(archive, into) == ["CUB_200_2011", "attributes.txt"]
    assert (into / ".CUB_200_2011.tgz.unpacked").is_file()
    (into / "attributes.txt").write_text("edited after unpacking")
    assert unpack(archive, into) == ["CUB_200_2011", "attributes.txt"]
    assert (into / "attributes.txt").read_text() == "edited after unpacking"  # not extracted again
    archive.unlink()  # the archive may be deleted once unpacked
    assert unpack(archive, into) == ["CUB_200_2011", "attributes.txt"]
    shutil.rmtree(into / "CUB_200_2011")  # an entry gone: unpacked again
    archive.write_bytes(original)
    unpack(archive, into)
    assert (into / "CUB_200_2011" / "images.txt").is_file()
    assert (into / "attributes.txt").read_text() == "1 has_bill_shape::curved\n"
    other = tmp_path / "other"
    other.mkdir()
    (other / "attributes.txt").write_text("a different archive\n" * 50)
    make_tar(archive, other)  # same name, other size: unpacked again, replacing the older entry
    assert unpack(archive, into) == ["attributes.txt"]
    assert (into / "attributes.txt").read_text().startswith("a different archive")


def test_an_interrupted_unpack_leaves_nothing_under_the_final_names(tmp_path, monkeypatch):
    archive = cub_tgz(tmp_path / "CUB_200_2011.tgz")
    into = tmp_path / "root"
    real = dl._extract_tar

    def extract_then_die(source, target):
        real(source, target)
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_extract_tar", extract_then_die)
    with pytest.raises(KeyboardInterrupt):
        unpack(archive, into)
    assert files_under(into) <= {".CUB_200_2011.tgz.lock"}
    monkeypatch.setattr(dl, "_extract_tar", real)
    assert unpack(archive, into) == ["CUB_200_2011", "attributes.txt"]


def test_a_damaged_archive_raises_an_unpack_error(tmp_path):
    archive = tmp_path / "car_ims.tgz"
    archive.write_bytes(b"this is not gzip data at all")
    with pytest.raises(UnpackError, match="car_ims.tgz"):
        unpack(archive, tmp_path / "root")
    assert files_under(tmp_path / "root") <= {".car_ims.tgz.lock"}


# ---------------------------------------------------------------- download_dataset


def test_download_dataset_cub_returns_the_layout_folder(server, tmp_path, monkeypatch):
    archive = cub_tgz(server.folder / "CUB_200_2011.tgz")
    use_archives(monkeypatch, "cub", [Archive("https://data.caltech.edu/x/CUB_200_2011.tgz", "CUB_200_2011.tgz",
                                              md5_of(archive), "CUB")])
    root = tmp_path / "root"
    folder = download_dataset("cub", root, base_url=server.url + "/")
    assert folder == root / "CUB_200_2011" == layout_folder("cub", root)
    assert (folder / "images.txt").is_file() and (root / "downloads" / "CUB_200_2011.tgz").is_file()
    assert len(read_layout("cub", folder).test) == 100
    assert server.requests == ["/CUB_200_2011.tgz"]
    assert download_dataset("cub", root, base_url=server.url) == folder  # nothing fetched again
    (root / "downloads" / "CUB_200_2011.tgz").unlink()
    assert download_dataset("cub", root, base_url=server.url) == folder
    assert server.requests == ["/CUB_200_2011.tgz"]


def test_download_dataset_cars196_and_sop(server, tmp_path, monkeypatch):
    cars_source = tmp_path / "cars-source"
    write_cars(cars_source)
    (cars_source / "car_ims").mkdir()
    (cars_source / "car_ims" / "000001.jpg").write_bytes(b"image")
    images = tar_of(server.folder / "car_ims.tgz", cars_source, "car_ims")
    annos = server.folder / "cars_annos.mat"
    annos.write_bytes((cars_source / "cars_annos.mat").read_bytes())
    use_archives(monkeypatch, "cars196", [Archive("http://x/car_ims.tgz", "car_ims.tgz", md5_of(images), "images"),
                                          Archive("http://x/cars_annos.mat", "cars_annos.mat", md5_of(annos), "mat")])
    root = tmp_path / "cars"
    assert download_dataset("cars196", root, base_url=server.url) == root
    assert (root / "car_ims" / "000001.jpg").is_file() and (root / "cars_annos.mat").is_file()
    assert len(read_layout("cars196", root).test) == 196

    sop = sop_zip(server.folder / "Stanford_Online_Products.zip")
    use_archives(monkeypatch, "sop", [Archive("ftp://x/Stanford_Online_Products.zip", "Stanford_Online_Products.zip",
                                              md5_of(sop), "SOP")])
    folder = download_dataset("sop", tmp_path / "sop", base_url=server.url)
    assert folder == tmp_path / "sop" / "Stanford_Online_Products"
    assert (folder / "bicycle_final" / "0_0.JPG").is_file()
    assert len(read_layout("sop", folder).test) == 10


def test_a_mirror_variable_changes_the_url(server, tmp_path, monkeypatch):
    (server.folder / "mirror").mkdir()
    archive = cub_tgz(server.folder / "mirror" / "CUB_200_2011.tgz")
    use_archives(monkeypatch, "cub", [Archive("https://data.caltech.edu/records/x/files/CUB_200_2011.tgz",
                                              "CUB_200_2011.tgz", md5_of(archive), "CUB")])
    monkeypatch.setenv("DMLBENCH_CUB_URL", f"{server.url}/mirror")
    assert [url for _, url in source_urls("cub")] == [f"{server.url}/mirror/CUB_200_2011.tgz"]
    assert [url for _, url in source_urls("cub", "http://other/")] == ["http://other/CUB_200_2011.tgz"]
    assert download_dataset("cub", tmp_path / "root") == tmp_path / "root" / "CUB_200_2011"
    assert server.requests == ["/mirror/CUB_200_2011.tgz"]
    monkeypatch.delenv("DMLBENCH_CUB_URL")
    assert [url for _, url in source_urls("cub")] == ["https://data.caltech.edu/records/x/files/CUB_200_2011.tgz"]
    assert dl.mirror_env("cars196") == "DMLBENCH_CARS196_URL"


def test_a_failed_download_names_the_url_and_where_to_put_the_file(tmp_path):
    base = closed_port_url().rsplit("/", 1)[0]
    with pytest.raises(DownloadError) as caught:
        download_dataset("sop", tmp_path, base_url=base)
    assert f"{base}/Stanford_Online_Products.zip" in str(caught.value)
    assert str(tmp_path / "downloads" / "Stanford_Online_Products.zip") in str(caught.value)


def test_inshop_gives_the_manual_steps_until_its_files_are_in_place(tmp_path):
    assert ARCHIVES["inshop"] == []
    with pytest.raises(DownloadError) as caught:
        download_dataset("inshop", tmp_path)
    message = str(caught.value)
    assert "img.zip" in message and "list_eval_partition.txt" in message and str(tmp_path) in message
    assert "mmlab.ie.cuhk.edu.hk/projects/DeepFashion/InShopRetrieval.html" in MANUAL_STEPS["inshop"]
    source = tmp_path / "img-source"
    (source / "img" / "WOMEN" / "Dresses" / "id_00000001").mkdir(parents=True)
    (source / "img" / "WOMEN" / "Dresses" / "id_00000001" / "01_1_front.jpg").write_bytes(b"image")
    (tmp_path / "downloads").mkdir()
    make_zip(tmp_path / "downloads" / "img.zip", source)
    (tmp_path / "Eval").mkdir()
    (tmp_path / "Eval" / "list_eval_partition.txt").write_text(
        "1\nimage_name item_id evaluation_status\nimg/WOMEN/Dresses/id_00000001/01_1_front.jpg id_00000001 train\n")
    assert download_dataset("inshop", tmp_path) == tmp_path == layout_folder("inshop", tmp_path)
    assert (tmp_path / "img" / "WOMEN" / "Dresses" / "id_00000001" / "01_1_front.jpg").is_file()


def test_unknown_names_list_the_valid_ones(tmp_path):
    for call in (lambda: download_dataset("mnist", tmp_path), lambda: layout_folder("mnist", tmp_path)):
        with pytest.raises(ValueError, match="cars196.*cub.*inshop.*sop"):
            call()


def test_layout_folders():
    root = Path("/data")
    assert layout_folder("cub", root) == root / "CUB_200_2011"
    assert layout_folder("cars196", root) == root
    assert layout_folder("sop", root) == root / "Stanford_Online_Products"
    assert layout_folder("inshop", root) == root


def test_the_archive_table():
    assert set(ARCHIVES) == {"cub", "cars196", "sop", "inshop"}
    for name, archives in ARCHIVES.items():
        for archive in archives:
            assert archive.url.rsplit("/", 1)[1] == archive.filename
            assert archive.md5 is None or (len(archive.md5) == 32 and int(archive.md5, 16) >= 0)
    assert [a.filename for a in ARCHIVES["cars196"]] == ["car_ims.tgz", "cars_annos.mat"]
    assert [a.is_archive for a in ARCHIVES["cars196"]] == [True, False]
    assert ARCHIVES["cub"][0].url == "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz"
    assert ARCHIVES["sop"][0].url == "ftp://cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip"
