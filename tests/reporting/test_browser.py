"""The report in a real browser: headless Chromium opens it, and its tables and figures are displayed."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from dmlbench.reporting.browser import check_page, screenshot
from dmlbench.paths import REPO_ROOT
from dmlbench.reporting.report import SCREENSHOT

REPORT = REPO_ROOT / "results" / "report.html"


def test_the_committed_report_displays_its_tables_and_figures():
    record = check_page(REPORT)
    assert len(record["images"]) >= 10 and len(record["tables"]) >= 6
    assert record["broken_images"] == [] and record["hidden_images"] == [] and record["broken_links"] == []
    assert all(t["shown_height"] > 0 and t["rows"] > 1 for t in record["tables"])
    assert all(i["natural_width"] > 100 for i in record["images"])  # decoded pictures, not icons
    shot = Image.open(REPO_ROOT / "results" / "figures" / SCREENSHOT)  # made with the report
    assert shot.size == (1280, 900)


def test_screenshot_of_the_first_screen_is_a_real_picture(tmp_path):
    path = screenshot(REPORT, tmp_path / "first.png", width=800, height=600)
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.shape == (600, 800) and pixels.std() > 5  # text and figures, not a blank page


def test_broken_images_and_links_are_caught(tmp_path):
    png = io.BytesIO()
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(png, format="PNG")
    good = base64.b64encode(png.getvalue()).decode()
    page = tmp_path / "page.html"
    (tmp_path / "here.csv").write_text("a\n1\n")
    page.write_text(f"""<html><body><h1 id="top">t</h1>
        <img src="data:image/png;base64,{good}"><img src="missing.png"><img src="data:image/png;base64,AAAA">
        <table><tr><td>1</td></tr><tr><td>2</td></tr></table>
        <a href="#top">ok</a> <a href="#nowhere">bad anchor</a> <a href="here.csv">ok file</a>
        <a href="gone.csv">bad file</a></body></html>""")
    record = check_page(page)
    assert len(record["images"]) == 3 and len(record["broken_images"]) == 2
    assert record["broken_links"] == ["#nowhere", "gone.csv"]
    assert record["tables"][0]["rows"] == 2 and not (tmp_path / ".page.browser-check.html").exists()


def test_a_missing_browser_is_named(monkeypatch):
    from dmlbench.reporting import browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    with pytest.raises(browser.BrowserError, match="apt-get install chromium"):
        browser.check_page(REPORT)


def test_the_committed_tuned_report_shows_its_tuning_section():
    tuned = REPO_ROOT / "results" / "tuned" / "report.html"
    record = check_page(tuned)
    assert record["broken_images"] == [] and record["hidden_images"] == [] and record["broken_links"] == []
    html = tuned.read_text(encoding="utf-8")
    section = html[html.index("Tuning: every loss at its defaults"):html.index("Can the study tell its cells apart")]
    assert "default → tuned" in section and "In short, tuning" in section and "<img" in section


def test_the_committed_reports_rank_what_their_study_is_about_and_their_tables_fit_1400_px():
    import json

    tuned = REPO_ROOT / "results" / "tuned"
    rows = json.loads((tuned / "summary.json").read_text())["tuning"]["datasets"]["han-typefaces"]["rows"]
    leader = max(rows, key=lambda row: row["tuned_map@r"])
    html = (tuned / "report.html").read_text(encoding="utf-8")
    first = html[:html.index('id="Protocol"')]
    assert f"Best by test MAP@R at tuned settings: <strong>{leader['loss']} + {leader['miner']}</strong>" in first
    tuned_cells = sum(row["changed"] for row in rows)  # a search that chose its defaults adds no tuned cell
    assert f"{13 + tuned_cells} cells (13 loss x miner cells at their default settings, {tuned_cells} at their tuned" in first
    for report in (REPORT, tuned / "report.html"):
        record = check_page(report, width=1400)  # nothing cut off: each table fits, or scrolls in its own box
        assert [t["header"] for t in record["tables"] if not (t["fits"] or t["scrolls_sideways"])] == [], report
