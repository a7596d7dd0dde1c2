"""Tables as the report shows them: compact HTML (every row shown, columns under their human names,
numbers right-aligned), means with the half-width of their interval, and the table of every cell of
a dataset with its comparison to the baseline.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .labels import DISPLAY_METRICS, VERDICTS, column_label
from .safehtml import NO_MATH
from .tables import by_result


class Html(str):
    """A table cell already written in HTML (not escaped again)."""


# Every table fits a 1400 px wide page: headers wrap, long text (settings, notes, run ids) wraps, and a
# table wider than the page all the same scrolls sideways in its own box instead of being cut off.
TABLE_STYLE = """<style>
table.dml { border-collapse: collapse; font-size: 12px; margin: 0; }
table.dml th, table.dml td { padding: 1px 8px; line-height: 1.3; text-align: right; white-space: nowrap;
  border: none; }
table.dml thead th { white-space: normal; min-width: 3.5em; max-width: 11em; overflow-wrap: break-word; }
table.dml sup { line-height: 0; font-size: 75%; }
table.dml thead th { border-bottom: 1px solid #888; font-weight: 600; vertical-align: bottom; }
table.dml td.text, table.dml th.text { text-align: left; }
table.dml tbody tr:nth-child(odd) { background: #f3f3f3; }
table.dml tr.marked td { font-weight: 600; }
table.dml td.wrap { white-space: normal; min-width: 12em; max-width: 28em; text-align: left; }
table.dml td.id { white-space: normal; min-width: 14em; max-width: 22em; text-align: left; overflow-wrap: anywhere; }
div.dml-wide { max-width: 100%; overflow-x: auto; margin: 0.2em 0 0.5em 0; }
div.dml-scroll { max-height: 24em; max-width: 100%; overflow: auto; display: inline-block; border: 1px solid #ddd; }
</style>"""

ID_COLUMNS = ("run_id",)  # long identifiers: broken at their '__' separators when the page is narrow


def number_text(value, digits: int = 4) -> str:
    """A number as a reader reads it: thousands separated ('177,611'), large ones without decimals,
    hundreds with one, the rest with ``digits``; NaN and None as an en dash."""
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return "\u2013"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    size = abs(float(value))
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100:
        return f"{value:,.1f}"
    if 0 < size < 0.5 * 10 ** -digits:  # would show as 0.0000
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def html_table(frame: pd.DataFrame, *, digits: int = 4, marked: set[int] = frozenset(), scroll: bool = False,
               wrap: tuple[str, ...] = ()) -> str:
    """``frame`` as a compact HTML table that fits the page or scrolls sideways (every row shown;
    ``scroll``: in a box that also scrolls down), columns named by :func:`column_label`; numbers by
    :func:`number_text`; text columns in ``wrap`` wrapped, run ids broken at their separators; rows
    whose position is in ``marked`` in bold."""
    import html

    def cell(value, column) -> str:
        if isinstance(value, Html):
            return str(value)
        if value is None or isinstance(value, (int, float, np.integer, np.floating, np.bool_)):
            return html.escape(number_text(value, digits))
        text = html.escape(str(value))
        return text.replace("__", "__<wbr>") if column in ID_COLUMNS else text

    def is_text(value) -> bool:  # "0.3885 ± 0.0120" and "+0.0183" are numbers to the eye: right-aligned
        return isinstance(value, str) and not re.match(r"[+-]?\d", value)

    text_columns = {c for c in frame.columns if frame[c].map(is_text).any()}
    head = "".join(f'<th class="{"text" if c in text_columns else "num"}">{html.escape(column_label(c))}</th>'
                   for c in frame.columns)
    body = []
    for position, row in enumerate(frame.itertuples(index=False)):
        cells = []
        for column, value in zip(frame.columns, row):
            kind = ("wrap" if column in wrap else "id" if column in ID_COLUMNS else
                    "text" if column in text_columns else "num")
            cells.append(f'<td class="{kind}">{cell(value, column)}</td>')
        opening = '<tr class="marked">' if position in marked else "<tr>"
        body.append(opening + "".join(cells) + "</tr>")
    table = f'<table class="dml"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    wide = f'<div class="dml-wide {NO_MATH}">'  # names with dollar signs are not typeset by MathJax
    return TABLE_STYLE + (f'{wide}<div class="dml-scroll">{table}</div></div>' if scroll else f"{wide}{table}</div>")


def with_interval(table: pd.DataFrame, metric: str) -> list[str]:
    """'mean ± half-width' of ``metric``'s (symmetric t-) interval per row; the mean alone where there
    is no interval (one seed)."""
    return [f"{m:.4f}" if not (np.isfinite(lo) and np.isfinite(hi)) else f"{m:.4f} ± {(hi - lo) / 2:.4f}"
            for m, lo, hi in zip(table[metric], table[f"{metric}_low"], table[f"{metric}_high"])]


def merged_miners(seeds: pd.DataFrame, marks: dict[tuple[str, str], str] | None = None) -> list:
    """The miner column of a seed table: the mark of its group of identical cells, and the cells its row
    stands for (the seed table's ``same_as``), as in 'none<sup>a</sup> (= triplet + margin-triplets)'."""
    import html

    same = seeds["same_as"] if "same_as" in seeds else [""] * len(seeds)
    out = []
    for loss, miner, others in zip(seeds["loss"], seeds["miner"], same):
        mark = f"<sup>{marks[(loss, miner)]}</sup>" if marks and (loss, miner) in marks else ""
        merged = f" (= {html.escape(others)})" if isinstance(others, str) and others else ""
        out.append(Html(f"{html.escape(miner)}{mark}{merged}") if mark or merged else miner)
    return out


def results_table(seeds: pd.DataFrame, comparison: pd.DataFrame | None = None,
                  baseline: tuple[str, str] | None = None, marks: dict[tuple[str, str], str] | None = None,
                  metrics: tuple[str, ...] = DISPLAY_METRICS, tied: pd.DataFrame | None = None,
                  baselines: pd.DataFrame | None = None) -> tuple[pd.DataFrame, set[int]]:
    """Every cell of one dataset, best first by MAP@R (a group of identical cells one row, its miner
    naming the others: :func:`merged_miners`): MAP@R, R-Precision and Recall@1 with their intervals,
    the other metrics' means, whether it is tied with the best (``tied``, a claims.tied_with_best
    table), the paired difference in MAP@R to ``baseline`` with its verdict; the trivial baselines
    (``baselines``, their seed-table rows) as the last rows, unnumbered and unranked. Returns the table
    to show and the position of the baseline cell's row (to mark)."""
    seeds = by_result(seeds)
    out = pd.DataFrame({"#": range(1, len(seeds) + 1), "loss": list(seeds["loss"])})
    out["miner"] = merged_miners(seeds, marks)
    for metric in metrics:
        if metric in seeds:
            out[metric] = with_interval(seeds, metric) if metric in INTERVAL_SHOWN else list(seeds[metric])
    if seeds["seeds"].nunique() > 1:  # else the caption says how many
        out["seeds"] = list(seeds["seeds"])
    cells = list(zip(seeds["loss"], seeds["miner"]))
    if tied is not None and len(tied):
        status = {(r.loss, r.miner): (r.status if r.status != "worse" else f"worse (p {r.p_holm:.3f})")
                  for r in tied.itertuples()}
        out["vs best"] = [status.get(c, "") for c in cells]
    if comparison is not None and baseline is not None and not comparison.empty:
        versus = comparison.set_index(["loss", "miner"])
        out["vs baseline"] = [
            "baseline" if c == tuple(baseline) else (
                f"{versus.loc[c, 'difference']:+.4f} ({VERDICTS[versus.loc[c, 'verdict']]})" if c in versus.index else "")
            for c in cells]
    marked = {i for i, c in enumerate(cells) if baseline and c == tuple(baseline)}
    return _with_baseline_rows(out, baselines, metrics), marked


INTERVAL_SHOWN = ("map@r", "r_precision", "recall@1")  # the metrics whose interval the table of cells shows


def _with_baseline_rows(out: pd.DataFrame, baselines: pd.DataFrame | None, metrics) -> pd.DataFrame:
    """The table of cells with the trivial baselines' rows after them ('' in the columns they lack)."""
    if baselines is None or baselines.empty:
        return out
    rows = pd.DataFrame({"#": [""] * len(baselines), "loss": list(baselines["loss"]),
                         "miner": list(baselines["miner"])})
    for metric in metrics:
        if metric in out and metric in baselines:
            rows[metric] = with_interval(baselines, metric) if metric in INTERVAL_SHOWN else list(baselines[metric])
    if "seeds" in out:
        rows["seeds"] = list(baselines["seeds"])
    table = pd.concat([out.astype({"#": object}), rows], ignore_index=True).reindex(columns=out.columns)
    return table.astype(object).where(table.notna(), None)  # a value a baseline lacks shows as a dash
