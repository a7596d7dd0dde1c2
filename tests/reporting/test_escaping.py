"""Names from a study file are shown as text in the report, never run as markup.

A study file you were sent may name its study, losses, miners, sampler and network (import paths
``module:Name``, whose attribute may be any string) and give arguments that carry HTML. The report
built over such a study (the real report notebook, over runs written by hand) is opened in headless
Chromium: every payload would change the page's title if it ran, and each is shown as written.
"""

import sys
import textwrap

import pandas as pd
import pytest
import yaml

from dmlbench.reporting.htmltables import html_table
from dmlbench.reporting.narrative import study_header
from dmlbench.reporting.safehtml import markdown_html

from ..support import tiny_settings
from .test_report import default_like_manifest, fake_runs

MODULE = "dmlbench_test_payloads"


def payload(what: str) -> str:
    """HTML that renames the page if a browser runs it (no dot: it may be an import path's attribute)."""
    return (f"<script>document['title']='pwned-{what}'</script>" if len(what) % 2 else
            f"<img src=x onerror=document['title']='pwned-{what}'>")


NAMES = {what: payload(what) for what in ("study", "loss", "miner", "model", "sampler", "argument")}

COMPONENTS = f'''
"""Components registered under attribute names that carry HTML."""
import dmlbench.models.convnet as convnet
from dmlbench.losses.triplet import TripletMarginLoss
from dmlbench.miners import MINERS
from dmlbench.samplers.pk import PKSampler


class NotedLoss(TripletMarginLoss):
    def __init__(self, note: str = "", **kwargs):
        super().__init__(**kwargs)


globals()[{NAMES["loss"]!r}] = NotedLoss
globals()[{NAMES["miner"]!r}] = type("Miner", (MINERS.get("none"),), {{}})
globals()[{NAMES["model"]!r}] = type("Model", (convnet.ConvEmbedder,), {{}})
globals()[{NAMES["sampler"]!r}] = type("Sampler", (PKSampler,), {{}})
'''


def test_markup_in_sentences_is_escaped_and_harmful_links_dropped():
    text = (f"Study **{NAMES['study']}** ran {NAMES['loss']} [here](javascript:alert(1)) <javascript:alert(2)> "
            "and `a <b>` $x$.")
    html = markdown_html(text)
    assert "<script" not in html and "<img" not in html and "href=\"javascript" not in html
    assert "<strong>&lt;script&gt;document['title']='pwned-study'&lt;/script&gt;</strong>" in html
    assert "<code>a &lt;b&gt;</code>" in html and "tex2jax_ignore" in html


def test_no_name_of_a_study_reaches_the_html_as_markup():
    manifest = default_like_manifest()
    manifest["name"], manifest["path"] = NAMES["study"], f"studies/`{NAMES['study']}`.yaml"
    status = pd.DataFrame({"state": ["failed"], "loss": [NAMES["loss"]], "miner": [NAMES["miner"]], "seed": [0],
                           "run_id": ["r"], "note": [f"ValueError: {NAMES['argument']}"]})
    table = html_table(pd.DataFrame({"loss": [NAMES["loss"]], "miner": [NAMES["miner"]], "map@r": [0.5]}))
    shown = markdown_html(study_header(manifest, status)) + markdown_html(f"^a^ **{NAMES['loss']} + x**")
    for html in (shown, table):
        assert "<script" not in html.lower() and "<img" not in html.lower()
    assert "<sup>a</sup>" in shown and f"Study <strong>{NAMES['study'].replace('<', '&lt;').replace('>', '&gt;')}" \
        in shown


@pytest.fixture(scope="module")
def payload_report(tmp_path_factory, tiny_fmnist):
    """report.html built by the report notebook over a study whose every name carries HTML."""
    root = tmp_path_factory.mktemp("payloads")
    (root / f"{MODULE}.py").write_text(textwrap.dedent(COMPONENTS))
    path = root / "payloads.yaml"
    component = {what: f"{MODULE}:{NAMES[what]}" for what in ("loss", "miner", "model", "sampler")}
    path.write_text(yaml.safe_dump({
        "name": NAMES["study"], "datasets": ["fashion-mnist"], "seeds": [0, 1],
        "settings": tiny_settings(model=component["model"], sampler=component["sampler"]),
        "losses": {"triplet": {"margin": 0.2}, component["loss"]: {"note": NAMES["argument"]}},
        "miners": {"none": {}, component["miner"]: {}}}))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(root))
        patch.setenv("PYTHONPATH", str(root))  # the report's kernel imports the components too
        for name, value in (("DATA", tiny_fmnist.parent), ("CACHE", root / "cache"), ("RESULTS", root / "results"),
                            ("DOWNLOAD", "0")):
            patch.setenv(f"DMLBENCH_{name}", str(value))
        from dmlbench.reporting.report import build_report
        from dmlbench.study.cells import load_study

        fake_runs(load_study(path))
        yield build_report(path)
    sys.modules.pop(MODULE, None)


def test_the_report_holds_no_markup_from_the_study_file(payload_report):
    html = payload_report.read_text(encoding="utf-8")
    for name in NAMES.values():
        assert name not in html  # each shown escaped, never as it was written
    assert "&lt;script&gt;document['title']='pwned-study'&lt;/script&gt;" in html
    assert html.count("pwned") > 10


def test_chromium_runs_no_script_of_the_study_file_and_shows_its_names_as_written(payload_report):
    from dmlbench.reporting.browser import check_page

    record = check_page(payload_report)
    assert record["title"] == "dmlbench report: payloads"  # no payload ran: each would have renamed the page
    assert not [i for i in record["images"] if i["src"] == "x"]  # no image made of a name
    for what in ("study", "loss", "miner", "model"):
        assert NAMES[what] in record["text"], what
