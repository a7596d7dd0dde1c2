"""From finished runs to the report, one job per module:

    runs        finished run folders into tables; each cell's state
    tables      tables computed from the runs, and their CSV files
    stats       intervals, paired tests, Holm adjustment
    figures     the study's figures (plots: one run's figures, for the experiment notebook)
    narrative   the report's generated sentences, as functions of the tables
    literature  the published numbers beside ours
    context     what one report reads once: the study file and its results folder
    sections    one function per report-notebook step
    summary     results/summary.json (its schema in the docstring)
    htmltables  HTML tables; labels: names as a reader sees them
    report      building the report: executing the notebook, HTML, the screenshot
    browser     the headless-browser check of the report
    readme      the generated blocks of README.md and docs/
"""
