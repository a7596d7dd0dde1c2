"""The report as a reader sees it: opened in a real browser (headless Chromium).

``check_page(html)`` loads the page in Chromium with a small script added at its end. After the
page has loaded, the script records what the browser displays: every image (whether it decoded,
and its size on screen), every table (its size, whether it fits the page's width or scrolls sideways
in a box of its own), every in-page link (whether its target exists), the page's title and the text
it shows (so a test can tell that no script of the page changed the one and that names are shown as
written in the other). The
browser writes the finished DOM out (``--dump-dom``), and the record is read back from it. Links to
local files are checked on disk. ``screenshot(html, png)`` saves the first screen as a PNG.

Chromium comes from Debian's ``chromium`` package (``apt-get install chromium``; ``make test``
installs it when run as root).
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..fileio import write_if_changed

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
MARKER = "dmlbench-browser-check"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--no-first-run", "--allow-file-access-from-files")

_PROBE = """
<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images).map(function (img) {
    var box = img.getBoundingClientRect();
    return {src: (img.getAttribute("src") || "").slice(0, 60), complete: img.complete,
            natural_width: img.naturalWidth, natural_height: img.naturalHeight,
            shown_width: box.width, shown_height: box.height};
  });
  var page = document.documentElement.clientWidth;
  var tables = Array.from(document.querySelectorAll("table")).map(function (t) {
    var box = t.getBoundingClientRect(), scrolls = false, limit = page;
    for (var el = t.parentElement; el && el !== document.documentElement; el = el.parentElement) {
      var x = getComputedStyle(el).overflowX;
      if (x === "visible") continue;
      limit = Math.min(limit, el.getBoundingClientRect().right);
      if ((x === "auto" || x === "scroll") && el.scrollWidth > el.clientWidth + 1) { scrolls = true; }
    }
    return {rows: t.rows.length, shown_height: box.height, shown_width: box.width, right: box.right,
            fits: box.right <= limit + 0.5, scrolls_sideways: scrolls,
            header: Array.from(t.querySelectorAll("th")).slice(0, 3).map(function (h) { return h.textContent; })};
  });
  var anchors = Array.from(document.querySelectorAll("a[href]")).map(function (a) {
    var href = a.getAttribute("href");
    var target = href.charAt(0) === "#" ? document.getElementById(decodeURIComponent(href.slice(1))) : null;
    return {href: href, local_target_found: href.charAt(0) === "#" ? target !== null : null};
  });
  var out = document.createElement("pre");
  out.id = "%s";
  out.textContent = JSON.stringify({images: images, tables: tables, anchors: anchors, title: document.title,
                                    page_width: page, text: document.body.innerText});
  document.body.appendChild(out);
});
</script>
""" % MARKER


class BrowserError(RuntimeError):
    """Chromium is missing or failed; the message says how to get it or what it printed."""


def find_chromium() -> str:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    raise BrowserError("no Chromium found (looked for " + ", ".join(CANDIDATES) + "); install Debian's package: "
                       "'apt-get install chromium' (as root; 'make test' does it when run as root)")


def _run(arguments: list[str], timeout: float) -> subprocess.CompletedProcess:
    command = [find_chromium(), *FLAGS, *arguments]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BrowserError(f"Chromium did not finish within {timeout:.0f} s: {' '.join(command)}") from None
    if done.returncode != 0:
        raise BrowserError(f"Chromium failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done


def check_page(html_path: str | os.PathLike, *, width: int | None = None, timeout: float = 120.0) -> dict:
    """What Chromium displays of the page: images, tables, links (see the module docstring), in a
    window ``width`` pixels wide (Chromium's default without). Each table records whether it ``fits``
    the page's width and whether it ``scrolls_sideways`` in a box of its own; ``cut_tables`` lists the
    first headers of those that do neither (part of them out of reach)."""
    html_path = Path(html_path).resolve()
    text = html_path.read_text(encoding="utf-8")
    probe_path = html_path.with_name(f".{html_path.stem}.browser-check.html")  # beside it: relative links still resolve
    probed = text.replace("</body>", _PROBE + "</body>", 1) if "</body>" in text else text + _PROBE
    probe_path.write_text(probed, encoding="utf-8")
    try:
        size = [f"--window-size={width},900"] if width else []
        done = _run([*size, "--virtual-time-budget=15000", "--dump-dom", probe_path.as_uri()], timeout)
    finally:
        probe_path.unlink(missing_ok=True)
    match = re.search(rf'<pre id="{MARKER}">(.*?)</pre>', done.stdout, re.S)
    if not match:
        raise BrowserError("the page never finished loading in Chromium (the check script did not run)")
    record = json.loads(html_lib.unescape(match.group(1)))
    missing_files = []
    for anchor in record["anchors"]:
        href = anchor["href"]
        parsed = urlparse(href)
        if parsed.scheme in ("", "file") and not href.startswith("#"):
            target = (html_path.parent / unquote(parsed.path)).resolve() if parsed.scheme == "" else Path(unquote(parsed.path))
            if not target.exists():
                missing_files.append(href)
    record["broken_images"] = [i["src"] for i in record["images"] if not i["complete"] or i["natural_width"] == 0]
    record["hidden_images"] = [i["src"] for i in record["images"] if i["shown_width"] == 0 or i["shown_height"] == 0]
    record["broken_links"] = [a["href"] for a in record["anchors"] if a["local_target_found"] is False] + missing_files
    record["cut_tables"] = [t["header"] for t in record["tables"] if not t["fits"] and not t["scrolls_sideways"]]
    return record


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, *, width: int = 1280, height: int = 900,
               timeout: float = 120.0) -> Path:
    """The page's first screen (``width`` x ``height``) as a PNG, written atomically and only when its
    bytes differ from the file's (the same page gives the same picture: the file is left alone)."""
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    partial = png_path.with_name(f".{png_path.name}.partial.png")
    try:
        _run([f"--window-size={width},{height}", "--virtual-time-budget=15000", f"--screenshot={partial}",
              Path(html_path).resolve().as_uri()], timeout)
        if not partial.is_file():
            raise BrowserError(f"Chromium wrote no screenshot to {partial}")
        write_if_changed(png_path, partial.read_bytes())
    finally:
        partial.unlink(missing_ok=True)
    return png_path
