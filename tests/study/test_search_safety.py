"""The search command on files a user was sent: index names stay plain names inside the run folder,
a query uses the run's latest build and says which, damaged index files fail in one line naming the
file and the rebuild, odd input (one image, --grid a folder, --run-dir a file) is refused in one
line, unreadable images are skipped and listed, and images in every PIL mode (16-bit grey, palette,
alpha) reach the network with their values kept, up to the index's embeddings."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from dmlbench.cli import main
from dmlbench.errors import DamagedFileError
from dmlbench.study.search import SearchError, build, image_batch, plain_image, query, read_image

from ..training.test_checkpoint_safety import finished_run

GREY = {"kind": "grey", "height": 28, "width": 28, "mean": 0.3, "std": 0.35}  # a dark-background dataset
PHOTO = {"kind": "photo", "size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


@pytest.fixture
def run(isolated, tmp_path):
    """A finished run folder of the tiny settings (an untrained network is enough to index with)."""
    return finished_run(tmp_path / "runs").path


def write_images(folder, count=4, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def first_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("dmlbench: error: "), err
    return err


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs-index", "a/b", "..", ".hidden", ""])
def test_an_index_name_must_be_a_plain_name_inside_the_run(run, tmp_path, capsys, name):
    with pytest.raises(SearchError, match="named with letters, digits"):
        build(run, split="test", family="flat", name=name)
    assert not (tmp_path / "x").exists() and not (run / "search").exists()
    assert main(["search", "build", str(run), "--split", "test", "--index", "flat", "--name", name]) == 2
    assert f"index name {name!r}" in first_line(capsys)


def test_a_query_uses_the_runs_latest_build_and_says_which(run, tmp_path, capsys):
    out = build(run, images=write_images(tmp_path / "my photos!"), family="flat")
    assert out.name == "my-photos"  # the folder's name, made plain
    answer = query(run, item=0, k=2)
    assert (answer["name"], answer["chosen"]) == ("my-photos", "the run's only index")
    assert answer["index"].startswith("flat")
    build(run, split="test", family="flat")  # named after the split
    assert build(run, images=write_images(tmp_path / "photos", seed=1), family="flat").name == "photos"
    assert (run / "search" / ".latest").read_text() == "photos\n"
    answer = query(run, item=0, k=3)  # not 'test': the index built last
    assert (answer["name"], answer["chosen"]) == ("photos", "the run's latest build")
    assert main(["search", "query", str(run), "--id", "0", "-k", "2"]) == 0
    assert "index: photos (flat), the run's latest build" in capsys.readouterr().out.splitlines()
    build(run, images=tmp_path / "my photos!", family="flat")  # built again: the latest once more
    assert query(run, item=0, k=2)["name"] == "my-photos"
    # no .latest (indexes built before it was written), or one naming no index: the newest manifest
    newest = run / "search" / "test" / "manifest.json"
    os.utime(newest, ns=(newest.stat().st_atime_ns, newest.stat().st_mtime_ns + 10**10))
    for latest in (None, "../../elsewhere\n", "removed\n"):
        (run / "search" / ".latest").unlink(missing_ok=True)
        if latest is not None:
            (run / "search" / ".latest").write_text(latest)
        answer = query(run, item=0, k=2)
        assert (answer["name"], answer["chosen"]) == ("test", "the run's most recently written index")
    with pytest.raises(SearchError, match=r"run \S+ has no index named 'nameless' \(built: my-photos, photos, test\); "
                                          r"choose one with --name"):
        query(run, item=0, name="nameless")
    assert len(query(run, item=0, k=3, name="my-photos")["neighbours"]) == 3


def test_a_run_without_an_index_says_how_to_make_one(run, capsys):
    with pytest.raises(SearchError, match=r"has no index yet; make one with 'dmlbench search build .* --images FOLDER"):
        query(run, item=0)
    assert main(["search", "serve", str(run)]) == 2
    assert "has no index yet" in first_line(capsys)


def damage(where, file: str, how: str) -> None:
    path = where / file
    if how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00not what it was" * 8)
    elif how == "remove":
        path.unlink()
    elif how == "keys":
        path.write_text(json.dumps({"run_id": "x"}))
    elif how == "edited":
        manifest = json.loads(path.read_text())
        path.write_text(json.dumps(manifest | {"index": {"family": "ball-tree"}, "items": "all"}))


@pytest.mark.parametrize("file,how", [("index.faiss", "truncate"), ("index.faiss", "garbage"), ("index.faiss", "remove"),
                                      ("embeddings.npy", "truncate"), ("embeddings.npy", "garbage"),
                                      ("manifest.json", "truncate"), ("manifest.json", "keys"),
                                      ("manifest.json", "edited")])
@pytest.mark.parametrize("digests", [True, False], ids=["recorded", "older-manifest"])
def test_a_damaged_index_file_is_named_with_the_way_to_rebuild(run, tmp_path, capsys, file, how, digests):
    where = build(run, images=write_images(tmp_path / "photos"), family="flat")
    if not digests:  # a manifest written before the files' digests were recorded
        manifest = json.loads((where / "manifest.json").read_text())
        del manifest["files"]
        (where / "manifest.json").write_text(json.dumps(manifest))
    damage(where, file, how)
    with pytest.raises(DamagedFileError) as error:
        query(run, item=0, name="photos")
    text = str(error.value)
    assert "\n" not in text and str(where) in text and "dmlbench search build" in text and "--name photos" in text
    assert main(["search", "query", str(run), "--id", "0", "--name", "photos"]) == 2
    assert "dmlbench search build" in first_line(capsys)


def test_odd_input_is_refused_in_one_line(run, tmp_path, capsys):
    one = tmp_path / "one"
    write_images(one, count=1)
    with pytest.raises(SearchError, match=f"image folder {one} holds one image"):
        build(run, images=one)
    build(run, images=write_images(tmp_path / "photos"), family="flat")
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["search", "query", str(run), "--id", "0", "-k", "2", "--grid", str(tmp_path)]) == 2
    assert f"--grid {tmp_path} is a folder" in first_line(capsys)
    assert main(["search", "query", str(run), "--id", "0", "-k", "2", "--grid", str(tmp_path / "afile" / "g.png")]) == 2
    assert "cannot write the retrieval grid" in first_line(capsys)
    for given in (afile, afile / "below"):
        assert main(["run", "--loss", "contrastive", "--run-dir", str(given)]) == 2
        assert f"{afile} is a file, not a folder" in first_line(capsys)


def saved(tmp_path, image: Image.Image, name: str) -> Image.Image:
    """The image written as a PNG and read back as the search command reads a user's image."""
    image.save(tmp_path / name)
    return read_image(tmp_path / name)


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    wide = (np.arange(28 * 28).reshape(28, 28) * 83).astype(np.uint16)
    eight = np.rint(wide / 257.0).astype(np.uint8)
    for image in (saved(tmp_path, Image.fromarray(wide), "wide.png"), Image.fromarray(wide.astype(np.int32))):
        assert image.mode in ("I;16", "I")
        assert np.array_equal(np.asarray(plain_image(image)), eight)
        np.testing.assert_array_equal(image_batch([image], GREY).numpy(), image_batch([Image.fromarray(eight)], GREY).numpy())


def test_palette_and_alpha_images_convert_by_their_meaning(tmp_path):
    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    rgb[:, :14] = (200, 40, 10)
    rgb[:, 14:] = (10, 90, 250)
    palette = saved(tmp_path, Image.fromarray(rgb).quantize(colors=4), "palette.png")
    assert palette.mode == "P" and np.array_equal(np.asarray(plain_image(palette)), rgb)
    alpha = np.zeros((28, 28), dtype=np.uint8)
    alpha[:, 14:] = 255  # left half transparent
    rgba = saved(tmp_path, Image.fromarray(np.dstack([rgb, alpha])), "rgba.png")
    for behind, preprocess in ((0, GREY), (255, PHOTO)):  # the dataset's background: dark Fashion-MNIST, white photos
        expected = rgb.copy()
        expected[:, :14] = behind
        assert np.array_equal(np.asarray(plain_image(rgba, behind)), expected)
        np.testing.assert_array_equal(image_batch([rgba], preprocess).numpy(),
                                      image_batch([Image.fromarray(expected)], preprocess).numpy())
    grey = np.full((28, 28), 180, dtype=np.uint8)
    la = saved(tmp_path, Image.fromarray(np.dstack([grey, np.full((28, 28), 128, np.uint8)]), "LA"), "la.png")
    assert la.mode == "LA"
    assert np.abs(np.asarray(plain_image(la, 0)).astype(int) - 90).max() <= 1  # half of 180 over black
    clear = saved(tmp_path, Image.fromarray(rgb).quantize(colors=4), "clear.png")
    clear.info["transparency"] = 0  # palette entry 0 transparent
    assert plain_image(clear, 255).mode == "RGB"


def test_unreadable_images_are_skipped_listed_and_recorded(run, tmp_path, capsys):
    folder = write_images(tmp_path / "photos", count=4)
    whole = (folder / "img0.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])  # damaged: its data stops halfway
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture")
    assert main(["search", "build", str(run), "--images", str(folder), "--index", "flat"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("indexed 4 images with run") and "as index 'photos'" in out[0]
    assert out[1].startswith("skipped 3 unreadable images: cut.png (damaged or unreadable (")
    assert "empty.png (an empty file (0 bytes))" in out[1] and "notes.jpg (not an image" in out[1]
    manifest = json.loads((run / "search" / "photos" / "manifest.json").read_text())
    assert [(item["id"], item["source"]) for item in manifest["items"]] == \
        [(i, str(folder / f"img{i}.png")) for i in range(4)]
    assert [(s["source"], s["reason"].split(" (")[0]) for s in manifest["skipped"]] == [
        (str(folder / "cut.png"), "damaged or unreadable"), (str(folder / "empty.png"), "an empty file"),
        (str(folder / "notes.jpg"), "not an image")]
    assert len(query(run, item=1, k=3)["neighbours"]) == 3
    few = write_images(tmp_path / "few", count=1)
    (few / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(SearchError, match=r"image folder \S+ holds 1 readable image of 2: an index needs two or more; "
                                          r"skipped 1 unreadable image: broken.png \("):
        build(run, images=few, family="flat")
    assert not (run / "search" / "few").exists() and (run / "search" / ".latest").read_text() == "photos\n"


def test_16_bit_and_palette_images_index_as_their_8_bit_and_rgb_versions(run, tmp_path):
    """End to end through build: a 16-bit gradient (read as I;16 from a PNG, as I from a TIFF) embeds
    as its 8-bit version, not as the white silhouette a clipping conversion makes; a palette PNG as
    its RGB version."""
    folder = tmp_path / "modes"
    folder.mkdir()
    y, x = np.mgrid[0:28, 0:28]
    wide = ((x * 28 + y) * 83).astype(np.uint16)  # 0..65000
    Image.fromarray(np.rint(wide / 257).astype(np.uint8)).save(folder / "a-8bit.png")
    Image.fromarray(wide).save(folder / "b-16bit.png")
    Image.fromarray(wide.astype(np.int32)).save(folder / "c-32bit.tif")  # Pillow writes no mode-I PNG
    Image.fromarray(np.full((28, 28), 255, np.uint8)).save(folder / "d-white.png")
    rgb = np.zeros((28, 28, 3), dtype=np.uint8)
    rgb[:, :10], rgb[:, 10:20], rgb[:, 20:] = (200, 40, 10), (10, 90, 250), (250, 250, 120)
    Image.fromarray(rgb).save(folder / "e-rgb.png")
    Image.fromarray(rgb).quantize(colors=4).save(folder / "f-palette.png")
    assert [Image.open(folder / name).mode for name in ("b-16bit.png", "c-32bit.tif", "f-palette.png")] == \
        ["I;16", "I", "P"]
    out = build(run, images=folder, family="flat")
    vectors = np.load(out / "embeddings.npy")
    names = [os.path.basename(item["source"]) for item in json.loads((out / "manifest.json").read_text())["items"]]
    assert names == sorted(os.listdir(folder))
    eight, sixteen, thirty_two, white, colour, palette = vectors
    for same in (sixteen, thirty_two):
        assert np.abs(same - eight).max() < 1e-5
    assert np.abs(white - eight).max() > 1e-3  # a clipped 16-bit image would embed as this silhouette
    assert np.abs(palette - colour).max() < 1e-5 and np.abs(colour - eight).max() > 1e-3
    answer = query(run, image=folder / "b-16bit.png", k=3)  # the three gradients, all at distance 0
    assert {os.path.basename(n["source"]) for n in answer["neighbours"]} == {"a-8bit.png", "b-16bit.png", "c-32bit.tif"}
    assert max(n["distance"] for n in answer["neighbours"]) < 1e-3
