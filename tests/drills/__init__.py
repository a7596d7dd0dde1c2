"""The reliability and security drill (issue 30), as tests CI runs.

Bad inputs: :mod:`tests.drills.cases` (each run through the real command line by
``test_bad_inputs.py``; ``python -m tests.drills.table`` prints them). The faults and attacks, each a
regression test that failed before its fix:

1. code from a planted checkpoint: ``tests/training/test_checkpoint_safety.py``
2. script injection into report.html: ``tests/reporting/test_escaping.py`` (headless Chromium)
3. ``lr: 1e-3`` and text where a number belongs: ``tests/test_config_numbers.py``
4. damaged stores: dataset caches ``tests/datasets/test_damaged_cache.py`` and ``test_image_cache.py``;
   Optuna storage and trial records ``tests/study/test_damaged_stores.py``; checkpoints
   ``tests/training/test_checkpoint_safety.py`` and ``tests/study/test_restore_checkpoint.py``; search
   index files ``tests/study/test_search_safety.py``; notebooks ``tests/study/test_disk_full.py``
5. an edited component reusing old runs: ``tests/test_sources.py``
6. checks made too late (tuning ranges, indexes blocks, data roots): ``tests/study/test_early_checks.py``
7. silently wrong results (nlist above the items, 16-bit images): ``tests/study/test_early_checks.py``,
   ``tests/study/test_search_safety.py``, ``tests/datasets/test_image_cache.py``
8. paths (index names, a ``faiss.py`` in the working directory): ``tests/study/test_search_safety.py``,
   ``tests/test_user_paths.py``
9. a full disk: ``tests/study/test_disk_full.py``
10. the smaller ones (one-image folder, ``--grid`` a folder, ``--run-dir`` a file, ``--cell`` without
    ``--study``, the tuner's Ctrl-C): ``tests/study/test_search_safety.py``, this folder's cases,
    ``tests/study/test_damaged_stores.py``
"""
