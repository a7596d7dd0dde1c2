"""The command line as a user meets it: fast help and list, a version, help on every option, one
spelling of the study argument, -v anywhere, progress on long commands."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from dmlbench import catalogue
from dmlbench.catalogue import SECTIONS, Entry, read_section
from dmlbench.cli import _imported_section, build_parser, main

HEAVY = ("torch", "torchvision", "pandas", "matplotlib", "faiss", "papermill", "optuna")
# Runs the CLI, then names the heavy packages it loaded, on stderr (argparse's --help exits early).
PROBE = ("import sys\nfrom dmlbench.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
         f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}), file=sys.stderr)\n")


def commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def loaded_by(*args: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    line = [line for line in done.stderr.splitlines() if line.startswith("LOADED")]
    assert line, done.stderr
    return done.stdout, line[-1]


@pytest.mark.parametrize("args", [["--help"], ["list"], ["list", "losses"], ["--version"],
                                  *([name, "--help"] for name in commands())])
def test_help_list_and_version_load_no_heavy_package(args):
    """`dmlbench --help` took 6 s and `list` seconds: both imported torch (the component registries,
    the search command's index families). A command's own modules load when it runs."""
    out, loaded = loaded_by(*args)
    assert out.strip()
    assert loaded == "LOADED []", f"dmlbench {' '.join(args)} imports {loaded}"


@pytest.mark.parametrize("section", SECTIONS)
def test_the_source_tells_each_section_as_the_imported_registry_does(section):
    read = read_section(section)
    assert read is not None, f"dmlbench.catalogue cannot read {section} from the source: list would import torch"
    assert read == _imported_section(section)


def test_list_prints_every_registered_component_its_doc_and_compatible_miners(capsys):
    from dmlbench.criterion import compatible_miners
    from dmlbench.datasets import DATASETS
    from dmlbench.losses import LOSSES
    from dmlbench.miners import MINERS
    from dmlbench.models import MODELS
    from dmlbench.samplers import SAMPLERS

    expected = []
    for title, registry in {"losses": LOSSES, "miners": MINERS, "samplers": SAMPLERS, "datasets": DATASETS,
                            "models": MODELS}.items():
        expected.append(f"{title}:")
        for name, doc in registry.describe():
            extra = (f"  [consumes {registry.get(name).consumes}; miners: {', '.join(compatible_miners(name))}]"
                     if title == "losses" else "")
            expected.append(f"  {name:19s} {doc}{extra}")
    assert main(["list"]) == 0
    assert capsys.readouterr().out.splitlines() == expected
    assert main(["list", "samplers"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [line for line in expected if "random batches" in line.lower()
                                                        or line.startswith(("  hierarchical", "  pk "))]


PLANTED = '''
from .base import LOSSES, Loss, make_name


class PairBase(Loss):
    """Pairs, with a base docstring."""

    consumes: str = "pairs"


@LOSSES.register("plain")
class Plain(PairBase):
    pass


@LOSSES.register("described")
class Described(Loss):
    """Its own docstring.

    More lines."""

    consumes = "batch"
'''


def plant(tmp_path: Path, body: str) -> None:
    (tmp_path / "losses").mkdir()
    (tmp_path / "losses" / "__init__.py").write_text("from .base import LOSSES\nfrom .planted import Plain\n")
    (tmp_path / "losses" / "base.py").write_text('class Loss:\n    """Any loss."""\n\n    consumes = "any"\n')
    (tmp_path / "losses" / "planted.py").write_text(body)


def test_the_source_reader_follows_bases_and_gives_up_where_only_running_tells(tmp_path, monkeypatch):
    monkeypatch.setattr(catalogue, "PACKAGE", tmp_path)
    plant(tmp_path, PLANTED)
    assert read_section("losses") == [Entry("described", "Its own docstring.", consumes="batch"),
                                      Entry("plain", "Pairs, with a base docstring.", consumes="pairs")]
    (tmp_path / "losses" / "planted.py").write_text(PLANTED + '\n\n@LOSSES.register(make_name())\nclass Late(Loss):\n'
                                                    '    """Named at run time."""\n')
    assert read_section("losses") is None
    (tmp_path / "losses" / "planted.py").write_text(PLANTED.replace('consumes = "batch"', 'consumes = "ba" + x'))
    assert read_section("losses") is None


def test_every_option_argument_and_command_has_help():
    missing = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing.extend(f"{name} {c.dest}" for c in action._choices_actions if not c.help)
                for command, sub in action.choices.items():
                    walk(sub, f"{name} {command}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "dmlbench")
    assert not missing, f"no help text: {missing}"


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"dmlbench {version('dmlbench')}"


@pytest.mark.parametrize("command", ["run", "study", "report", "tune", "indexes"])
def test_every_command_that_reads_a_study_takes_study_file(command):
    assert build_parser().parse_args([command, "--study", "my.yaml"]).study == Path("my.yaml")


def test_study_takes_the_file_as_study_option_or_as_the_older_positional(isolated, capsys):
    study = isolated / "mine.yaml"
    study.write_text(yaml.safe_dump({"datasets": ["fashion-mnist"], "cells": [{"loss": "contrastive", "miner": "none"}]}))
    assert main(["study", "--study", str(study), "--datasets"]) == 0
    assert main(["study", str(study), "--datasets"]) == 0
    assert main(["study", str(study), "--study", str(study), "--datasets"]) == 0
    assert capsys.readouterr().out.splitlines() == ["fashion-mnist"] * 3
    for args, message in [(["study", "--datasets"], "the study file is missing; give it as --study FILE"),
                          (["study", str(study), "--study", "other.yaml"], "two study files")]:
        with pytest.raises(SystemExit) as exited:
            main(args)
        assert exited.value.code == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("args", [["list"], ["study", "--study", "s.yaml"], ["report"], ["data", "prepare", "cub"],
                                  ["bench", "losses"], ["search", "build", "RUN"]])
def test_verbose_before_or_after_the_command(args):
    parser = build_parser()
    assert parser.parse_args(args).verbose is False
    assert parser.parse_args(["-v", *args]).verbose is True
    assert parser.parse_args([args[0], "-v", *args[1:]]).verbose is True
    assert parser.parse_args([*args[:1], "--verbose", *args[1:]]).verbose is True
    if args[0] != "bench":  # after a benchmark's name, every option is the benchmark's own
        assert parser.parse_args([*args, "-v"]).verbose is True
    assert all(any("-v" in a.option_strings for a in sub._actions) for sub in commands().values())


def test_study_counts_its_cells_and_the_report_its_notebook_cells_on_stderr(isolated, tmp_path, capsys):
    """A study was minutes of silence: its cells and the report's notebook cells are counted on bars
    (stderr, beside the terminal's output), and the last line says what was written where."""
    from .support import tiny_settings

    study = tmp_path / "counted.yaml"
    study.write_text(yaml.safe_dump({"name": "counted", "datasets": ["fashion-mnist"], "seeds": [0],
                                     "cells": [{"loss": "contrastive", "miner": "none"}],
                                     "settings": tiny_settings(epochs=1)}))
    assert main(["study", "--study", str(study)]) == 0
    captured = capsys.readouterr()
    assert re.search(r"counted: cells: 100%.*1/1", captured.err), captured.err
    assert re.search(r"report: 100%.*\b(\d+)/\1 ", captured.err), captured.err
    assert captured.out.splitlines()[-1].endswith("report.html")
    executed = (Path(captured.out.splitlines()[-1].split()[-1]).parent / "report.ipynb").read_text()
    assert "report: " not in executed and "cell/s" not in executed and "it/s" not in executed


def test_fashion_mnist_download_counts_its_bytes_on_stderr(isolated, tiny_fmnist, tmp_path, monkeypatch, capsys):
    import hashlib
    import http.server
    import threading
    from functools import partial

    import dmlbench.datasets.fashion_mnist as fm

    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tiny_fmnist))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("DMLBENCH_DATA", str(tmp_path / "empty"))
        monkeypatch.setenv("DMLBENCH_DOWNLOAD", "1")
        monkeypatch.setenv("DMLBENCH_FASHION_MNIST_URL", f"http://127.0.0.1:{server.server_address[1]}/")
        monkeypatch.setattr(fm, "_debian_dirs", lambda: [])
        monkeypatch.setattr(fm, "OFFICIAL_MD5", {p.name: hashlib.md5(p.read_bytes()).hexdigest()
                                                 for p in tiny_fmnist.iterdir()})
        assert main(["data", "prepare", "fashion-mnist"]) == 0
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    for path in tiny_fmnist.iterdir():
        assert re.search(rf"fashion-mnist {path.name}: 100%", err), err
