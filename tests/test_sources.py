"""A component's code is part of its runs' identity (issue 30, item 5: an edited loss reused old runs)."""

from __future__ import annotations

import importlib
import json
import sys

import pytest

from dmlbench import sources
from dmlbench.config import RunConfig
from dmlbench.datasets import DATASETS
from dmlbench.errors import ConfigError
from dmlbench.losses import LOSSES
from dmlbench.miners import MINERS
from dmlbench.models import MODELS
from dmlbench.samplers import SAMPLERS

REGISTRIES = [DATASETS, LOSSES, MINERS, MODELS, SAMPLERS]

USER_LOSS = '''
from dmlbench.losses import TripletMarginLoss

SCALE = {scale}


def shrink(x):
    """Scaled embeddings."""
    return x * SCALE


class Scaled(TripletMarginLoss):
    """A triplet loss on scaled embeddings."""

    def terms(self, embeddings, labels, tuples):
        return super().terms(shrink(embeddings), labels, tuples)  # {comment}
'''


def test_the_record_holds_the_code_of_every_component():
    """Fails when a component's code changed and `make lock` was not run: bump its version where what
    it computes changed, or `make lock FORCE=1` for a change that alters no number."""
    recorded, current = sources.read_lock(), sources.current_sources(REGISTRIES)
    stale = [f"{kind} {name}: recorded {recorded.get(kind, {}).get(name)}, now {entry}"
             for kind, entries in current.items() for name, entry in entries.items()
             if recorded.get(kind, {}).get(name) != entry]
    assert not stale, "sources.lock.json is not the code's record (see dmlbench/sources.py):\n" + "\n".join(stale)


def test_recorded_components_keep_their_plain_version():
    config = RunConfig(dataset="fashion-mnist", loss="triplet", miner="semi-hard")
    assert config.component_versions() == {"dataset": 1, "loss": 1, "miner": 1, "sampler": 1, "model": 1}
    assert "component_versions" not in config.hashed_dict()
    # han-typefaces' version 2 (typeface groups and folds) is hashed: its runs are new runs
    folded = RunConfig(dataset="han-typefaces", loss="triplet", miner="semi-hard")
    assert folded.component_versions()["dataset"] == 2 and folded.hashed_dict()["component_versions"] == {"dataset": 2}


def test_an_edited_package_loss_gets_new_runs(monkeypatch):
    """The drill: the code of 'triplet' differs from its record while its version stayed 1."""
    config = RunConfig(dataset="han-typefaces", loss="triplet", miner="semi-hard")
    before = config.run_id()
    lock = json.loads(sources.LOCK_PATH.read_text())
    lock["loss"]["triplet"]["digest"] = "0" * sources.DIGEST_CHARS  # the code the old runs were made with
    monkeypatch.setattr(sources, "read_lock", lambda: lock)
    after = config.run_id()
    assert after != before
    assert config.component_versions()["loss"] == f"1+{sources.source_digest(LOSSES.get('triplet'))}"


def _user_loss(tmp_path, monkeypatch, scale: float, comment: str = "scaled") -> type:
    folder = tmp_path / "userpkg"
    folder.mkdir(exist_ok=True)
    (folder / "scaled_loss.py").write_text(USER_LOSS.format(scale=scale, comment=comment))
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop("scaled_loss", None)
    importlib.invalidate_caches()
    return importlib.import_module("scaled_loss").Scaled


def test_a_user_loss_is_identified_by_its_code_and_what_it_calls(tmp_path, monkeypatch):
    config = RunConfig(dataset="han-typefaces", loss="scaled_loss:Scaled", miner="semi-hard")
    _user_loss(tmp_path, monkeypatch, 0.5)
    first = config.run_id()
    _user_loss(tmp_path, monkeypatch, 0.5, comment="a reworded comment")
    sources.source_digest.cache_clear()
    assert config.run_id() == first, "a comment is not a computation"
    _user_loss(tmp_path, monkeypatch, 0.25)  # the constant its helper function reads
    sources.source_digest.cache_clear()
    assert config.run_id() != first


def test_plain_source_drops_comments_docstrings_and_blank_lines():
    text = 'def f(x):\n    """Doc."""\n\n    return x + 1  # one\n'
    assert sources.plain_source(text) == "def f(x):\n    return x + 1"
    assert sources.plain_source('s = "# not a comment"\n') == 's = "# not a comment"'


def test_the_lock_refuses_a_changed_digest_under_the_same_version(tmp_path, monkeypatch):
    lock = tmp_path / "sources.lock.json"
    current = sources.current_sources([LOSSES])
    edited = json.loads(json.dumps(current))
    edited["loss"]["triplet"]["digest"] = "f" * sources.DIGEST_CHARS
    lock.write_text(json.dumps(edited))
    monkeypatch.setattr(sources, "LOCK_PATH", lock)
    sources.read_lock.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"loss 'triplet' \(version 1\).*Bump"):
            sources.write_lock([LOSSES])
        assert json.loads(lock.read_text()) == edited, "a refused lock writes nothing"
        assert sources.write_lock([LOSSES], force=True) == ["loss 'triplet' (version 1)"]
        assert json.loads(lock.read_text()) == current
    finally:
        sources.read_lock.cache_clear()
