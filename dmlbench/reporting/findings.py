"""The sentences of the report's claims over the replicate units (fold, seed): the cells tied with the
best, the named claims with their family, whether an exact test could reach the level at all, the
baselines beside the cells, how much of a cell's variance lies between folds, how well validation
orders the cells as the test does, and what an interval over two units or a clipped one means.

Every function takes the tables of :mod:`dmlbench.reporting.claims` (or a seed table) and returns
Markdown; no number is typed by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .claims import exact_floor, reachable
from .labels import cell_label, plural

T_975_ONE_DF = 12.7  # the 97.5% quantile of Student's t with 1 degree of freedom (12.706), rounded


def _names(cells: list[str], limit: int = 8) -> str:
    shown = ", ".join(cells[:limit])
    return shown + (f" and {len(cells) - limit} more" if len(cells) > limit else "")


def units_text(table: pd.DataFrame) -> str:
    """'12 units (3 folds x 4 seeds)' or '4 units (seeds)' for the best row of a seed table."""
    row = table.iloc[0]
    units, folds, seeds = int(row.get("units", row["seeds"])), int(row.get("folds", 0) or 0), int(row["seeds"])
    if folds > 1:
        return f"{plural(units, 'unit')} ({folds} folds x {plural(seeds, 'seed')})"
    return f"{plural(units, 'unit')} (seeds)"


def reachability_line(n_units: int, family: int, level: float) -> str | None:
    """One sentence when no exact sign-flip test over ``n_units`` pairs can pass Holm's first threshold
    (level / family) in a family of ``family`` tests; None when one can."""
    if family < 1 or reachable(n_units, family, level):
        return None
    return (f"With {plural(n_units, 'unit')} per comparison the smallest two-sided p an exact sign-flip test can give "
            f"is 2/2^{n_units} = {exact_floor(n_units):.4f}, above Holm's first threshold {level:g}/{family} = "
            f"{level / family:.4f}: no distribution-free test can separate these cells, and the paired t-tests' "
            f"verdicts rest on their normal-errors assumption.")


def tied_line(table: pd.DataFrame, seeds: pd.DataFrame, confidence: float, tuned: bool = False) -> str:
    """The first finding: the best cell by test MAP@R (with R-Precision beside it) and the group tied
    with it, from a :func:`dmlbench.reporting.claims.tied_with_best` table; the family size and the
    Holm-adjusted p of the closest cell not tied; whether an exact test could reach the level."""
    best = table.iloc[0]
    label = cell_label(best["loss"], best["miner"])
    row = seeds[(seeds["loss"] == best["loss"]) & (seeds["miner"] == best["miner"])].iloc[0]
    spread = (f" [{row['map@r_low']:.4f}, {row['map@r_high']:.4f}]" if np.isfinite(row["map@r_low"]) else "")
    line = (f"Best by test MAP@R{' at tuned settings' if tuned else ''}: **{label}**, MAP@R {best['map@r']:.4f}{spread} "
            f"(R-Precision {best['r_precision']:.4f}; {units_text(seeds)}, {confidence:.0%} t-interval)")
    family, tied = len(table) - 1, table[table["status"] == "tied"]
    worse = table[table["status"] == "worse"].sort_values("p_holm", ascending=False, kind="stable")
    if family == 0:
        return line + "; it is the only cell."
    names = [cell_label(r.loss, r.miner) for r in tied.itertuples()]
    untested = int((~np.isfinite(tied["p"].astype(float))).sum())
    line += (f". **Tied with it** (each of the other {plural(family, 'cell')} against it, paired by unit, Holm over "
             f"that family of {family}; tied = not worse at {1 - confidence:.2g}): "
             + (f"**{_names(names)}** ({plural(len(names), 'cell')}"
                + (f", {untested} of them with too few shared units for a test" if untested else "") + ")"
                if names else "none"))
    if len(worse):
        closest = worse.iloc[0]
        line += (f"; the closest cell not tied: {cell_label(closest['loss'], closest['miner'])} "
                 f"({closest['difference']:+.4f}, Holm-adjusted p = {closest['p_holm']:.4f})")
    else:
        line += "; no cell is significantly worse than it"
    exact = reachability_line(int(table["units"].max()), family, 1 - confidence)  # the design's units
    return line + "." + (f" {exact}" if exact else "")


def claims_line(claims: pd.DataFrame, confidence: float) -> str | None:
    """The named claims (best miner, best loss) as paired contrasts with their Holm-adjusted p over the
    family printed; 'tied' where the first is not significantly ahead, never 'best'."""
    if claims is None or claims.empty:
        return None
    family = len(claims)
    parts = []
    for r in claims.itertuples():
        what = {"best miner": "miners over the grid's losses", "best loss": "losses, each with its paper's sampling"}
        verdict = (f"**{r.first}** is the best {r.claim.split()[-1]}" if r.verdict == "best" else
                   f"**{r.first}** and **{r.runner_up}** are tied")
        tested = (f"[{r.low:+.4f}, {r.high:+.4f}] over {plural(int(r.units), 'unit')}, Holm-adjusted p = {r.p_holm:.4f}"
                  if np.isfinite(r.p_holm) else f"over {plural(int(r.units), 'unit')}, too few for a test")
        parts.append(f"{what.get(r.claim, r.claim)}: {r.first} minus {r.runner_up} {r.difference:+.4f} {tested}: "
                     f"{verdict}")
    family_text = ", ".join(claims["claim"])
    exact = reachability_line(int(claims["units"].max()), family, 1 - confidence) if claims["units"].max() > 1 else None
    return (f"Named claims, each the first against the runner-up by mean test MAP@R, paired by unit (family of "
            f"{family}: {family_text}; Holm): " + "; ".join(parts) + "." + (f" {exact}" if exact else ""))


def baselines_line(seeds: pd.DataFrame, baselines: pd.DataFrame) -> str | None:
    """Where the best and the weakest cells stand against the baselines (rows of
    :func:`dmlbench.reporting.tables.baseline_table`) in test MAP@R."""
    if baselines is None or baselines.empty:
        return None
    shown = "; ".join(f"{r['loss']} {r['map@r']:.4f}" + (f" [{r['map@r_low']:.4f}, {r['map@r_high']:.4f}]"
                                                         if np.isfinite(r["map@r_low"]) else "")
                      for _, r in baselines.iterrows())
    line = f"Baselines without metric learning (test MAP@R, mean over their units): {shown}."
    raw = baselines[baselines["loss"] == "raw pixels"]
    if raw.empty:
        return line
    floor = float(raw["map@r"].iloc[0])
    ranked = seeds.sort_values("map@r", ascending=False, kind="stable")
    best, below = ranked.iloc[0], ranked[ranked["map@r"] < floor]
    gap = best["map@r"] - floor
    line += (f" The best cell, {cell_label(best['loss'], best['miner'])}, is {abs(gap):.4f} "
             f"{'above' if gap >= 0 else 'below'} raw pixels; ")
    if below.empty:
        weakest = ranked.iloc[-1]
        return line + (f"every cell is above them (the weakest, {cell_label(weakest['loss'], weakest['miner'])}, "
                       f"by {weakest['map@r'] - floor:.4f}).")
    names = [f"{cell_label(l, m)} ({v:.4f})" for l, m, v in zip(below["loss"], below["miner"], below["map@r"])]
    return line + f"**{plural(len(below), 'cell')} below raw pixels**: {_names(names)}."


def variance_line(table: pd.DataFrame, dataset: str) -> str:
    """How much of the cells' MAP@R variance lies between folds (a
    :func:`dmlbench.reporting.claims.fold_variance` table of one dataset)."""
    shares = table["between_share"].dropna()
    if shares.empty:
        return (f"**{dataset}**: no cell ran on two folds with a replicate within a fold, so the variance between "
                "folds cannot be told from the variance within.")
    folds = int(table["folds"].max())
    return (f"**{dataset}**: over {plural(len(shares), 'cell')}, the median share of a cell's test MAP@R variance that "
            f"lies between folds is {shares.median():.0%} (quartiles {shares.quantile(0.25):.0%} to "
            f"{shares.quantile(0.75):.0%}; {folds} folds, method-of-moments one-way variance components per cell, "
            f"a negative between-fold estimate set to 0). The rest is between seeds within a fold.")


def agreement_line(agreement: dict, dataset: str) -> str:
    """Kendall's tau between validation and test MAP@R over the best cells, in one sentence."""
    tau = agreement.get("tau")
    if tau is None or not np.isfinite(tau):
        return (f"**{dataset}**: too few cells with a validation MAP@R ({agreement.get('cells', 0)}) for a rank "
                "agreement between validation and test (or their validation scores do not vary).")
    reading = ("orders them much as the test does" if tau >= 0.8 else
               "orders them only partly as the test does" if tau >= 0.4 else "orders them nearly independently of the test")
    return (f"**{dataset}**: over the {agreement['cells']} best cells by test MAP@R, Kendall's tau between their mean "
            f"validation MAP@R (at the selected epoch) and their mean test MAP@R is {tau:.2f} (p = {agreement['p']:.3f}): "
            f"validation {reading}, and model selection on it picks cells accordingly.")


def interval_notes(seeds: pd.DataFrame, confidence: float) -> str:
    """What the intervals of a seed table mean where it matters: two replicates (t quantile 12.7) and
    intervals clipped to the metric's range [0, 1]; '' when neither applies."""
    notes = []
    two = seeds[seeds.get("units", seeds["seeds"]) == 2]
    if len(two):
        notes.append(f"{plural(len(two), 'row')} rest on 2 replicates, where a {confidence:.0%} t-interval reaches "
                     f"{T_975_ONE_DF} standard errors either side of the mean: read them as no interval at all")
    if "clipped" in seeds:
        cut = seeds[seeds["clipped"].fillna("").astype(str) != ""]
        if len(cut):
            notes.append("intervals clipped to the metric's range [0, 1]: " + _names(
                [f"{cell_label(r['loss'], r['miner'])} ({r['clipped']})" for _, r in cut.iterrows()]))
    return ("Note: " + "; ".join(notes) + ".") if notes else ""
