"""The han-typefaces build (minutes the first time) says what it is doing: a progress bar per step on a
terminal, nothing where stderr is not one (an executed notebook, a log file)."""

import io

from dmlbench.datasets import typefaces
from dmlbench.datasets.typefaces import BuildSpec, build

TINY = BuildSpec(packages=("fonts-noto-cjk", "fonts-arphic-uming", "fonts-arphic-ukai", "fonts-wqy-zenhei",
                           "fonts-ipafont-gothic", "fonts-cwtex-kai", "fonts-lxgw-wenkai", "fonts-kiloji",
                           "fonts-unfonts-core", "fonts-wqy-microhei"),
                 min_typefaces=4, min_held_out=2, split_characters=(3, 2, 3), probe=10, folds=1)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_build_shows_each_step_on_a_terminal(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(typefaces.sys, "stderr", terminal)
    built = build(TINY)
    shown = terminal.getvalue().replace("\r", "\n")
    faces = built["facts"]["faces_examined"]
    assert f"han-typefaces: reading the faces' character maps: 100%" in shown and f"{faces}/{faces}" in shown
    assert "han-typefaces: rendering 10 probe characters per face: 100%" in shown
    kept = len(built["facts"]["faces"])
    assert f"han-typefaces: rendering characters in {kept} typefaces: 100%" in shown and "8/8" in shown


def test_the_build_is_silent_where_stderr_is_no_terminal(monkeypatch):
    quiet = io.StringIO()
    monkeypatch.setattr(typefaces.sys, "stderr", quiet)
    build(TINY)
    assert quiet.getvalue() == ""
