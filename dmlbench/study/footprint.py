"""The results' footprint: what the shipped results cost the repository, and keeping it small.

    compact_notebook(path)           # re-encode an executed notebook's PNGs as indexed colour, in place
    compact_folder(results)          # every executed notebook under a results folder; (files, bytes before, after)
    measure(repo)                    # the tracked tree's bytes, by kind, and what a full rerun adds to git

Every run ships its executed notebook and metrics.json; a rerun of the shipped studies rewrites them
all, and every version stays in the git history for good. Three rules keep that affordable:

- figures are indexed-colour PNGs (:func:`dmlbench.fileio.compact_png`): same pictures, about 40% of
  the bytes; an executed notebook is compacted as soon as its run finishes, and ``dmlbench footprint
  --compact`` (a step of ``make all``) compacts any that are not, so compacting is idempotent;
- ``checkpoint.pt`` files stay on the machine that trained them (.gitignore) except those a shipped
  result reloads (the report's t-SNE maps and retrieval grids: the first seed of each cell);
- no file is kept twice (a run shared by two studies lives once; see dmlbench.paths).

The budget (``TRACKED_BUDGET``, ``RERUN_BUDGET``) is checked by ``dmlbench footprint --check`` and
by tests/study/test_footprint.py on the repository itself.
"""

from __future__ import annotations

import base64
import json
import logging
import re
from pathlib import Path

from ..fileio import atomic_write_bytes, compact_png, disk_full_error, is_disk_full, set_aside

log = logging.getLogger("dmlbench")

MIB = 1 << 20
TRACKED_BUDGET = 40 * MIB  # the whole tracked tree
RERUN_BUDGET = 15 * MIB  # what one rerun of the shipped studies may add to the history (compressed)
# An HTML output's embedded images (the report's figures are shown as <img src="data:...">).
_HTML_PNG = re.compile(r'data:image/png;base64,([A-Za-z0-9+/=]+)')


def _compact_b64(text: str) -> str:
    return base64.b64encode(compact_png(base64.b64decode(text))).decode("ascii")


def _joined(value) -> str:
    return value if isinstance(value, str) else "".join(value)


def _as_stored(text: str, like):
    """``text`` in the form nbformat stored the value it replaces: one string, or a list of lines."""
    return text if isinstance(like, str) else text.splitlines(keepends=True)


def _compact_output(output: dict) -> bool:
    """Compacts an output's PNGs in place, the stored form of each value kept; whether any changed."""
    data, changed = output.get("data", {}), False
    if "image/png" in data:
        new = _compact_b64(_joined(data["image/png"]))
        if new != _joined(data["image/png"]):
            data["image/png"], changed = _as_stored(new, data["image/png"]), True
    if "text/html" in data:
        html = _joined(data["text/html"])
        new = _HTML_PNG.sub(lambda m: "data:image/png;base64," + _compact_b64(m.group(1)), html)
        if new != html:
            data["text/html"], changed = _as_stored(new, data["text/html"]), True
    return changed


def compact_notebook(path: str | Path) -> tuple[int, int]:
    """Re-encode every PNG of an executed notebook (image outputs and images inside HTML outputs) as
    indexed colour, atomically and in place; (bytes before, bytes after). Text, numbers and the
    notebook's layout are untouched; a notebook with nothing to compact is not rewritten at all."""
    path = Path(path)
    raw = path.read_bytes()
    nb = json.loads(raw)
    changed = [_compact_output(output) for cell in nb.get("cells", []) for output in cell.get("outputs", [])]
    if not any(changed):
        return len(raw), len(raw)
    # nbformat's own layout (indent 1, sorted keys, a final newline), as papermill and the report write it
    new = (json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()
    atomic_write_bytes(path, new)
    return len(raw), len(new)


def compact_folder(results: str | Path) -> tuple[int, int, int]:
    """Compact every executed notebook under ``results`` (runs' experiment.ipynb, the report's
    report.ipynb); (notebooks changed, bytes before, bytes after). A notebook that is not valid JSON
    (cut short) is named in a warning and set aside as ``<name>.damaged-<time>``: its run's results are
    in metrics.json, and rerunning the cell (or the report) writes the notebook again. A full disk ends
    it in one line (dmlbench.errors.DiskFullError); each notebook is then as it was or compacted whole."""
    changed = before = after = 0
    for path in sorted(Path(results).rglob("*.ipynb")):
        if path.name.endswith((".running.ipynb", ".failed.ipynb")):
            continue
        try:
            b, a = compact_notebook(path)
        except ValueError as error:  # json's decoding errors; UnicodeDecodeError too
            kept = set_aside(path)
            log.warning("%s: damaged notebook (not valid JSON: %s); set aside as %s, the rest compacted",
                        path, " ".join(str(error).split()), kept.name)
            continue
        except OSError as error:
            if not is_disk_full(error):
                raise
            raise disk_full_error(path.parent, path.stat().st_size, f"the size of {path.name}") from None
        changed += a != b
        before, after = before + b, after + a
    return changed, before, after
