"""A study: its file's spec and validation (cells.py), where cells run (cluster.py, executors.py),
running one cell through papermill (cells.py, kernel.py), the checks before a run (preflight.py),
and estimates of its work (estimate.py)."""
