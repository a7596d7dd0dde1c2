"""Benchmarks against pytorch-metric-learning, run as ``python -m dmlbench.bench <what>`` or
``dmlbench bench <what>``. Each prints a table of medians of interleaved repetitions measured in one
process, ours and the reference side by side, and keeps it in results/bench/."""
