"""The search command as a user keeps using it: ``serve`` loads a run's network and index once and
answers queries read one a line, each before the next line is read (a bad line is one error line,
and serving goes on); answers carry their class (a split's class names) and, where the query has a
label, whether each is right, framed green or red in the grid; CJK class names are drawn in a CJK
font. Real trained runs of the tiny Fashion-MNIST (tests/study/conftest.py)."""

from __future__ import annotations

import io
import json
import queue
import shutil
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from dmlbench.cli import main
from dmlbench.errors import DamagedFileError
from dmlbench.datasets.fashion_mnist import CLASS_NAMES
from dmlbench.study.search import (RIGHT, WRONG, answer_lines, build, cjk_font, cjk_font_files, open_search, query,
                                   serve)

from ..training.test_checkpoint_safety import finished_run
from .test_search_safety import write_images


def copied_run(at_study, tmp_path, which=0):
    """A trained run of the shared study, copied without its indexes: the test's builds stay its own."""
    path, study, root = at_study
    run = study.cells[which].run_dir
    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("search"))
    return copy


@pytest.fixture
def labelled(at_study, tmp_path, image_folder):
    """(run, folder): 30 test images of the tiny Fashion-MNIST in one folder per class, indexed as 'photos'."""
    run = copied_run(at_study, tmp_path)
    build(run, images=image_folder, family="flat", name="photos")
    return run, image_folder


def frame_pixels(path, colour: str) -> int:
    """How many pixels of the grid are the frame colour (#rrggbb), give or take antialiasing."""
    rgb = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    with Image.open(path) as grid:
        pixels = np.asarray(grid.convert("RGB")).astype(int)
    return int((np.abs(pixels - rgb).max(axis=2) <= 8).sum())


def test_serve_answers_each_line_as_query_does_and_survives_bad_lines(labelled, tmp_path):
    run, folder = labelled
    some = sorted(folder.rglob("*.png"))[5]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    lines = ["id 2\n", f"{some}\n", f"{tmp_path / 'none.png'}\n", "id 30\n", "id two\n", f"{broken}\n", "  id 7  \n",
             "\n", "id 4\n"]
    said: list[str] = []
    assert serve(run, k=3, lines=iter(lines), say=said.append) == 3  # the empty line stops: id 4 is not read
    assert said[0].startswith("serving index 'photos' of run ") and "the run's only index, k=3" in said[0]
    errors = [line for line in said if line.startswith("error: ")]
    assert errors == [f"error: image {tmp_path / 'none.png'} does not exist",
                      "error: id 30 is not an item of index 'photos': its ids run from 0 to 29",
                      "error: 'id two': an item is 'id N' with N a whole number from 0 to 29; anything else is read "
                      "as an image path",
                      f"error: cannot read image {broken}: not an image (no format PIL reads)"]
    assert sum(line.startswith("answered in ") for line in said) == 3
    expected = [answer_lines(query(run, k=3, **given)) for given in ({"item": 2}, {"image": some}, {"item": 7})]
    shown = [line for line in said[1:] if not line.startswith(("error: ", "answered in "))]
    assert shown == [line for block in expected for line in block]
    for stem in ("id2", some.stem, "id7"):
        assert (run / "search" / "photos" / "queries" / f"{stem}.png").is_file()


def test_serve_reads_stdin_and_answers_before_the_next_line(labelled):
    """The command itself, through pipes: each answer (and its time) arrives while stdin stays open."""
    run, folder = labelled
    server = subprocess.Popen([sys.executable, "-m", "dmlbench", "search", "serve", str(run), "-k", "4"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line.rstrip("\n")) for line in server.stdout], daemon=True).start()

    def ask(text: str) -> list[str]:
        server.stdin.write(text + "\n")
        server.stdin.flush()
        block = [lines.get(timeout=120)]
        while not block[-1].startswith(("answered in ", "error: ")):
            block.append(lines.get(timeout=120))
        return block

    try:
        assert lines.get(timeout=180).startswith("serving index 'photos'")
        first, bad, second = ask("id 1"), ask("nowhere.png"), ask(str(sorted(folder.rglob("*.png"))[0]))
    finally:
        server.stdin.close()
    assert server.wait(timeout=60) == 0, server.stderr.read()
    assert first[0].startswith(f"query: item 1 ({sorted(folder.rglob('*.png'))[1]})  label class")
    assert sum(" id " in line for line in first) == 4 and first[-1].startswith("answered in ")
    assert bad == ["error: image nowhere.png does not exist"]
    assert second[-2].startswith("retrieval grid: ") and second[-1].startswith("answered in ")
    assert float(second[-1].split()[2]) < 2.0  # the network and the index stay loaded: no start-up again


def test_split_answers_show_class_names_and_right_or_wrong(at_study, tmp_path, capsys):
    from dmlbench.datasets import load_dataset

    run = copied_run(at_study, tmp_path, 1)
    out = build(run, split="test", family="flat")
    images = load_dataset("fashion-mnist").test.images
    np.testing.assert_array_equal(np.load(out / "thumbnails.npy"), images)  # the grid's pictures, kept by the build
    manifest = json.loads((out / "manifest.json").read_text())
    labels = sorted({item["label"] for item in manifest["items"]})
    assert manifest["class_names"] == {str(c): CLASS_NAMES[c] for c in labels}
    vectors, all_labels = np.load(out / "embeddings.npy"), np.array([i["label"] for i in manifest["items"]])
    scores = vectors @ vectors.T
    np.fill_diagonal(scores, -np.inf)
    right = (all_labels[np.argsort(-scores, axis=1)[:, :8]] == all_labels[:, None]).sum(axis=1)
    item = int(np.flatnonzero((right > 0) & (right < 8))[0])  # a query with right and wrong answers among its 8
    searcher = open_search(run)
    answer = searcher.ask(item=item, k=8, grid=tmp_path / "grid.png")
    assert answer["right"] == right[item]
    assert "splits" not in searcher.cache  # the names and pictures came from the index: the dataset was not loaded
    truth = manifest["items"][item]["label"]
    assert answer["class"] == f"{CLASS_NAMES[truth]} ({truth})"
    for n in answer["neighbours"]:
        assert n["class"] == f"{CLASS_NAMES[n['label']]} ({n['label']})" and n["match"] == (n["label"] == truth)
    assert answer["right"] == sum(n["label"] == truth for n in answer["neighbours"])
    assert frame_pixels(tmp_path / "grid.png", RIGHT) > 50 and frame_pixels(tmp_path / "grid.png", WRONG) > 50
    assert main(["search", "query", str(run), "--id", str(item), "-k", "8"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].endswith(f"label {CLASS_NAMES[truth]} ({truth})")
    rows = printed[2:10]
    assert [(" right " in row, " wrong " in row) for row in rows] == \
        [(n["match"], not n["match"]) for n in answer["neighbours"]]
    assert printed[10] == f"right: {answer['right']} of 8 share the query's label"
    # an image in a folder named after a class (its name, or its id) takes that class as its label
    picture = Image.fromarray(images[item])
    folders = {str(truth): truth, "elsewhere": None} | ({CLASS_NAMES[truth]: truth} if "/" not in CLASS_NAMES[truth] else {})
    for folder, label in folders.items():
        (tmp_path / folder).mkdir()
        picture.save(tmp_path / folder / "q.png")
        assert searcher.label_of_image(tmp_path / folder / "q.png") == label
        assert searcher.ask(image=tmp_path / folder / "q.png", k=3)["label"] == label


def test_folder_labels_mark_answers_only_where_the_query_has_a_label(labelled, tmp_path):
    run, folder = labelled
    indexed = sorted(folder.rglob("*.png"))[9]  # an item of the index, found by its path
    answer = query(run, image=indexed, k=5, grid=tmp_path / "indexed.png")
    assert answer["label"] == indexed.parent.name and answer["neighbours"][0]["match"] is True
    assert all(n["match"] == (n["label"] == indexed.parent.name) for n in answer["neighbours"])
    (tmp_path / "queries" / indexed.parent.name).mkdir(parents=True)
    copy = shutil.copy(indexed, tmp_path / "queries" / indexed.parent.name / "new.png")  # not indexed, same class
    assert query(run, image=copy, k=5)["label"] == indexed.parent.name
    loose = shutil.copy(indexed, tmp_path / "queries" / "loose.png")  # in a folder that is no class
    answer = query(run, image=loose, k=5, grid=tmp_path / "loose.png")
    assert answer["label"] is None and answer["right"] is None and {n["match"] for n in answer["neighbours"]} == {None}
    assert not any(" right " in line or " wrong " in line for line in answer_lines(answer))
    assert frame_pixels(tmp_path / "loose.png", RIGHT) == frame_pixels(tmp_path / "loose.png", WRONG) == 0
    assert frame_pixels(tmp_path / "indexed.png", RIGHT) > 50


@pytest.fixture
def untrained(isolated, tmp_path):
    return finished_run(tmp_path / "runs").path


def test_cjk_class_names_are_drawn_with_a_cjk_font(untrained, tmp_path):
    if not cjk_font_files():
        pytest.skip("no CJK font is installed here (fc-list :lang=zh lists none)")
    rng = np.random.default_rng(0)
    for i, character in enumerate("己已巳己已巳"):
        (tmp_path / "hanzi" / character).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / "hanzi" / character / f"{i}.png")
    build(untrained, images=tmp_path / "hanzi", family="flat")
    from matplotlib.figure import Figure

    with warnings.catch_warnings(record=True) as plain:  # the default font has no such glyph: the check can fail
        warnings.simplefilter("always")
        figure = Figure()
        figure.subplots().set_title("己")
        figure.savefig(io.BytesIO(), format="png")
    assert any("missing from font" in str(w.message) for w in plain)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        answer = query(untrained, image=tmp_path / "hanzi" / "已" / "1.png", k=5)
    assert [str(w.message) for w in caught if "missing from font" in str(w.message)] == []
    assert answer["class"] == "已" and answer["neighbours"][0]["match"] is True
    assert "CJK" in cjk_font() or "AR PL" in cjk_font() or "WenQuanYi" in cjk_font()


def test_serve_refuses_one_shot_flags(labelled, capsys):
    run, _ = labelled
    assert main(["search", "serve", str(run), "--id", "3"]) == 2
    assert "'search serve' reads its queries from standard input" in capsys.readouterr().err
    assert main(["search", "serve", str(run), "-k", "30"]) == 2
    assert "k=30: the index 'photos' holds 30 images, so k runs from 1 to 29" in capsys.readouterr().err


def test_a_damaged_thumbnails_file_is_named_with_the_rebuild(at_study, tmp_path):
    run = copied_run(at_study, tmp_path, 1)
    out = build(run, split="test", family="flat", name="kept")
    (out / "thumbnails.npy").write_bytes((out / "thumbnails.npy").read_bytes()[:1000])
    with pytest.raises(DamagedFileError, match=f"{out / 'thumbnails.npy'}: its SHA-256 differs .*"
                                               f"dmlbench search build {run} --split test --name kept"):
        query(run, item=0, k=2)
    build(run, images=write_images(tmp_path / "photos"), family="flat", name="kept")  # a folder index, same name
    assert not (out / "thumbnails.npy").exists() and len(query(run, item=0, k=2)["neighbours"]) == 2
