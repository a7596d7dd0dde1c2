"""Dispatch ``dmlbench bench <what>`` to the benchmark module."""

from __future__ import annotations

import sys

BENCHMARKS = ("losses", "miners", "eval", "train", "cell", "equal", "indexes", "cache", "footprint", "backbones")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BENCHMARKS:
        print(f"usage: dmlbench bench {{{','.join(BENCHMARKS)}}} [options]", file=sys.stderr)
        return 2
    what, rest = argv[0], argv[1:]
    if what == "losses":
        from .losses import main as run
    elif what == "miners":
        from .miners import main as run
    elif what == "eval":
        from .eval import main as run
    elif what == "indexes":
        from .indexes import main as run
    elif what == "cache":
        from .cache import main as run
    elif what == "footprint":
        from .footprint import main as run
    elif what == "cell":
        from .cell import main as run
    elif what == "equal":
        from .equal import main as run
    elif what == "backbones":
        from .backbones import main as run
    else:
        from .train import main as run

    return run(rest)
