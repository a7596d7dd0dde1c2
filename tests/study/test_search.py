"""The search command on a small generated folder of images and on a dataset split, with a real
trained run: an indexed image finds itself first, answers match brute force over the saved
embeddings, and bad input fails with a message naming the problem."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from dmlbench.cli import main
from dmlbench.errors import DamagedFileError
from dmlbench.study.search import SearchError, build, query



def run_folder(at_study, which=0):
    path, study, root = at_study
    return study.cells[which].run_dir


def test_an_indexed_image_finds_itself_first_and_answers_match_brute_force(at_study, image_folder, tmp_path):
    run = run_folder(at_study)
    out = build(run, images=image_folder, family="flat", name="photos")
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["items"]) == 30 and manifest["run_id"] == run.name and (out / "index.faiss").is_file()
    embeddings = np.load(out / "embeddings.npy")
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
    some = sorted(image_folder.rglob("*.png"))[7]
    answer = query(run, image=some, k=5, name="photos", grid=tmp_path / "grid.png")
    first = answer["neighbours"][0]
    assert first["source"] == str(some.resolve()) and first["distance"] < 1e-3 and first["label"] == some.parent.name
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.width > 5 * grid.height / 2  # the query and five answers in one row
    # by id: the item is left out of its own answers, which are brute force's over the saved embeddings
    answer = query(run, item=4, k=6, name="photos")
    scores = embeddings @ embeddings[4]
    scores[4] = -np.inf
    assert [n["id"] for n in answer["neighbours"]] == np.lexsort((np.arange(30), -scores))[:6].tolist()
    assert (out / "queries" / "id4.png").is_file()


def test_a_split_is_indexed_with_the_runs_own_test_embeddings(at_study):
    from dmlbench.datasets import load_dataset
    from dmlbench.training.embed import embed_test_split

    run = run_folder(at_study, 1)
    out = build(run, split="test")
    expected, labels = embed_test_split(run, load_dataset("fashion-mnist"))
    expected = torch.nn.functional.normalize(expected, dim=1).numpy()
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), expected, atol=1e-6)
    items = json.loads((out / "manifest.json").read_text())["items"]
    assert [item["label"] for item in items] == labels.tolist()
    answer = query(run, item=0, k=3)  # the default index is HNSW, named after the split
    assert answer["index"].startswith("hnsw") and len(answer["neighbours"]) == 3
    assert all(n["source"].startswith("fashion-mnist:test:") for n in answer["neighbours"])


def test_bad_input_fails_with_a_message_naming_the_problem(at_study, image_folder, tmp_path):
    run, other = run_folder(at_study, 0), run_folder(at_study, 1)
    copy = tmp_path / run.name
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("search"))
    build(copy, images=image_folder, family="flat", name="photos")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    cases = [
        (lambda: build("no-such-run", images=image_folder), "unknown run 'no-such-run'"),
        (lambda: build(copy, images=image_folder, checkpoint=other / "checkpoint.pt"), "comes from another configuration"),
        (lambda: build(copy, images=tmp_path / "nowhere"), "image folder"),
        (lambda: build(copy, images=image_folder, family="ball-tree"), "cannot be saved; choose from flat, hnsw"),
        (lambda: query(copy, image=broken, name="photos"), f"cannot read image {broken}"),
        (lambda: query(copy, image=image_folder / "none.png", name="photos"), "does not exist"),
        (lambda: query(copy, item=0, k=30, name="photos"), "k=30: the index 'photos' can return 1 to 29 images"),
        (lambda: query(copy, item=30, name="photos"), "id 30 is not an item of index 'photos': its ids run from 0 to 29"),
        (lambda: query(copy, item=0, name="nameless"), "has no index named 'nameless' (built: photos)"),
        (lambda: query(copy, name="photos"), "give exactly one query"),
    ]
    for call, message in cases:
        with pytest.raises(SearchError) as error:
            call()
        assert message in str(error.value)
    # the same settings, other weights: the index no longer matches the checkpoint it was built with
    saved = torch.load(copy / "checkpoint.pt", weights_only=True)
    first = next(iter(saved["model"]))
    saved["model"][first] = saved["model"][first] + 1.0
    torch.save(saved, tmp_path / "other.pt")
    with pytest.raises(SearchError, match="was built with another checkpoint"):
        query(copy, item=0, name="photos", checkpoint=tmp_path / "other.pt")
    # in the run's own place, the record's size and SHA-256 of its checkpoint refuse it first
    shutil.copy(tmp_path / "other.pt", copy / "checkpoint.pt")
    with pytest.raises(DamagedFileError, match=f"{copy / 'checkpoint.pt'}: .*(bytes where the run wrote|SHA-256)"):
        query(copy, item=0, name="photos")


def test_the_command_line_prints_the_neighbours(at_study, image_folder, capsys):
    run = run_folder(at_study)
    assert main(["search", "build", str(run), "--images", str(image_folder), "--name", "cli", "--index", "flat"]) == 0
    assert "indexed 30 images" in capsys.readouterr().out
    assert main(["search", "query", str(run), "--id", "2", "-k", "3", "--name", "cli"]) == 0
    out = capsys.readouterr().out
    assert out.count("similarity") == 3 and "retrieval grid:" in out
    assert main(["search", "query", str(run), "--id", "2", "-k", "99", "--name", "cli"]) == 2
    assert "k=99: the index 'cli' can return 1 to 29 images" in capsys.readouterr().err
