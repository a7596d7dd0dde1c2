"""Loading han-typefaces without the per-cell costs: the font packages read from dpkg's database
(not two dpkg processes per package), the normalisation statistics kept beside the build."""

import numpy as np

from dmlbench.datasets import typefaces
from dmlbench.datasets.typefaces import FONT_PACKAGES, package_files, package_files_from_dpkg, pixel_statistics

STATUS = """Package: fonts-a
Status: install ok installed
Architecture: all
Version: 1.2-3
Description: one
 continued: line

Package: fonts-b
Status: deinstall ok config-files
Version: 9

Package: fonts-c
Status: install ok installed
Version: 2:0.5
"""


def _admin(tmp_path):
    admin, fonts = tmp_path / "dpkg", tmp_path / "fonts"
    (admin / "info").mkdir(parents=True)
    fonts.mkdir()
    (admin / "status").write_text(STATUS)
    for name in ("a.ttf", "b.TTC", "readme.txt"):
        (fonts / name).write_text("x")
    (admin / "info" / "fonts-a.list").write_text(f"/.\n{fonts}\n{fonts / 'a.ttf'}\n{fonts / 'b.TTC'}\n"
                                                 f"{fonts / 'readme.txt'}\n{fonts / 'gone.otf'}\n")
    (admin / "info" / "fonts-c:amd64.list").write_text(f"{fonts / 'a.ttf'}\n")
    return admin, fonts


def test_installed_packages_and_their_font_files_come_from_the_database(tmp_path):
    admin, fonts = _admin(tmp_path)
    assert package_files("fonts-a", admin) == ("1.2-3", [str(fonts / "a.ttf"), str(fonts / "b.TTC")])
    assert package_files("fonts-c", admin) == ("2:0.5", [str(fonts / "a.ttf")])  # an architecture-qualified list
    assert package_files("fonts-b", admin) is None  # removed, its configuration kept: not installed
    assert package_files("fonts-z", admin) is None


def test_an_unreadable_database_asks_dpkg(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(typefaces, "package_files_from_dpkg", lambda p: asked.append(p) or ("v", []))
    assert package_files("fonts-a", tmp_path / "no-dpkg-here") == ("v", []) and asked == ["fonts-a"]


def test_the_database_and_dpkg_agree_on_this_machine():
    assert [package_files(p) for p in FONT_PACKAGES] == [package_files_from_dpkg(p) for p in FONT_PACKAGES]


def test_pixel_statistics_are_kept_exactly_and_recomputed_when_damaged(tmp_path, monkeypatch):
    monkeypatch.setenv("DMLBENCH_CACHE", str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, size=(50, 24, 24), dtype=np.uint8)
    pixels = images.astype(np.float64) / 255.0
    expected = (float(pixels.mean()), float(pixels.std()))
    assert pixel_statistics("0123456789abcdef", images) == expected
    store = typefaces.build_path("0123456789abcdef").with_suffix(".stats.json")
    assert store.is_file()
    assert pixel_statistics("0123456789abcdef", images) == expected  # read back bit for bit
    store.write_text('{"images": 1')
    assert pixel_statistics("0123456789abcdef", images) == expected
    fewer = images[:10].astype(np.float64) / 255.0  # a store of other images is not taken for these
    assert pixel_statistics("0123456789abcdef", images[:10]) == (float(fewer.mean()), float(fewer.std()))


def test_a_tsne_of_many_classes_is_one_series_in_the_colours_of_one_series_per_class():
    import torch
    from matplotlib import pyplot as plt

    from dmlbench.reporting.plots import tsne_figure

    labels = torch.arange(60).repeat_interleave(3)
    embeddings = torch.nn.functional.normalize(torch.randn(180, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    figure = tsne_figure(embeddings, labels, max_points=180)
    (series,) = figure.axes[0].collections
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    from matplotlib.colors import to_rgba

    colours = [tuple(c) for c in series.get_facecolors()]
    assert colours == [to_rgba(cycle[c % len(cycle)], 0.7) for c in labels.tolist()]
    few = tsne_figure(embeddings[:30], labels[:30] % 5, max_points=30)
    assert len(few.axes[0].collections) == 5 and few.axes[0].get_legend() is not None
    plt.close("all")
