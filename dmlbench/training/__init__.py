"""Training one run: the loop (loop.py), batches and feeds, per-epoch state and resume, torchrun and
distributed helpers, and the run's record (metrics.json, checkpoint.pt)."""
