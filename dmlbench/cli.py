"""The ``dmlbench`` command: list, run, study, report, data, readme.

    dmlbench list                               losses, miners, samplers, datasets, models
    dmlbench run --loss triplet --miner semi-hard --set epochs=2 --set loss_kwargs='{margin: 0.1}'
    dmlbench run --study studies/default.yaml --cell <run id>
    dmlbench study --study studies/default.yaml [--executor local|submitit-local|slurm] [--jobs N] [--no-report]
    dmlbench study --study studies/default.yaml --emit-make build/cells.mk | --status
    dmlbench tune --study studies/tuned.yaml [--search ID] [--trials N]   a study's hyperparameter searches
    dmlbench tuning --study studies/tuned.yaml   epochs per search, winners' gaps and places, ties after tuning
    dmlbench report --study studies/default.yaml
    dmlbench indexes --study studies/default.yaml   every finished run's embeddings under the study's indexes
    dmlbench indexes --study studies/default.yaml --costs   exact structures' distance shares against each run's rho
    dmlbench search build RUN [--images DIR]   index images with a run's network; search query RUN --image F
    dmlbench data prepare fashion-mnist         locate the files and build the decoded cache
    dmlbench data prepare cub --root DIR        find or download, verify, unpack, decode the images once
    dmlbench data prepare cub --check           verify a prepared dataset: counts, images, cache
    dmlbench readme [--check]                   refresh the generated blocks of README.md and docs/
    dmlbench bench losses|miners|eval [...]    time ours against pytorch-metric-learning's
    dmlbench bench train [...]                  training images/s: data pipeline, model step, both
    dmlbench bench indexes --data fashion-mnist  recall-speed frontiers of every index family (also --data manifold)
    dmlbench bench cache [--images 1200]        the image cache's decode rate on 1 and on every core
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from .config import load_yaml
from .errors import ConfigError, DatasetNotFoundError
from .registry import USER_PATH_ENV

log = logging.getLogger("dmlbench")


def _parse_set(items: list[str]) -> dict:
    values = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            values[key.strip()] = load_yaml(raw)  # numbers as YAML 1.2 spells them: lr=1e-3
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {key}: cannot parse {raw!r}: {error}") from None
    return values


def cmd_list(args) -> int:
    """Read from the component modules' source (no torch to load), or from the imported registries
    where the source does not tell (dmlbench.catalogue)."""
    from .catalogue import SECTIONS, feeds, read_section

    sections = {title: read_section(title) or _imported_section(title) for title in SECTIONS}
    for title, entries in sections.items():
        if args.what and args.what != title:
            continue
        print(f"{title}:")
        for entry in entries:
            extra = ""
            if entry.consumes is not None:
                miners = [m.name for m in sections["miners"] if feeds(m.name, m.produces, entry.consumes)]
                extra = f"  [consumes {entry.consumes}; miners: {', '.join(miners)}]"
            print(f"  {entry.name:19s} {entry.doc}{extra}")
    return 0


def _imported_section(title: str) -> list:
    """A section of 'dmlbench list' as its registry (LOSSES, ..., MODELS) describes it once imported."""
    import importlib

    from .catalogue import FACTS, Entry

    registry = getattr(importlib.import_module(f".{title}", __package__), title.upper())
    entries = []
    for name, doc in registry.describe():
        fact = FACTS.get(title)
        value = getattr(registry.get(name), fact) if fact else None
        entries.append(Entry(name, doc, **({fact: tuple(value) if fact == "produces" else value} if fact else {})))
    return entries


def cmd_run(args) -> int:
    from .paths import REPO_ROOT, adhoc_runs_dir, use_study_results
    from .training.rundir import RunDir
    from .study.cells import claim_results, load_study, resolve_run, study_name
    from .study.preflight import check_run

    values = _parse_set(args.set) | {k: v for k, v in (("loss", args.loss), ("miner", args.miner)) if v}
    if args.cell:  # a study's cell, in the study's results folder
        if not args.study:
            raise ConfigError("--cell needs --study FILE, the study the cell belongs to")
        if values:
            raise ConfigError("--study/--cell take their settings from the study file; drop --set/--loss/--miner")
        use_study_results(study_name(args.study))
        study = load_study(args.study)
        config, note, runs = study.cell(args.cell).config, None, None
    elif args.study and not values:
        raise ConfigError("--study needs --cell <run id> ('dmlbench study FILE --status' lists them), or --loss "
                          "(a run of that loss at the study's protocol)")
    else:  # ad hoc: at a study's protocol, outside every study's folder
        from .study.cells import adhoc_config

        config, note = adhoc_config(args.study or REPO_ROOT / "studies" / "default.yaml", values)
        runs, study = adhoc_runs_dir(), None
    folder = RunDir(args.run_dir if args.run_dir else resolve_run(config.run_id(), runs)).require_folder()
    if note:
        print(f"{config.run_id()}: {note}")
    if folder.is_done(config.run_id()):
        print(f"{folder.metrics}: finished already, not run again")
        return 0
    check_run(config)  # refused here, it says only why: before the epoch bar, before the study's folder is claimed
    if study is not None:
        claim_results(study)
    print(_run_with_progress(config, folder, log_output=args.verbose))
    return 0


def _run_with_progress(config, folder, *, log_output: bool) -> Path:
    """run_config with a bar of the run's epochs on the terminal (none while the notebook's output streams)."""
    import contextlib

    from .study.cells import epoch_progress, run_config

    shown = contextlib.nullcontext() if log_output else epoch_progress(folder, config.epochs, config.run_id()[:48])
    with shown:
        return run_config(config, run_dir=folder.path, log_output=log_output)


def _enter_study(path) -> None:
    """This process (and those it starts) writes to the study's own results folder (dmlbench.paths)."""
    from .paths import use_study_results
    from .study.cells import study_name

    use_study_results(study_name(path))


def cmd_study(args) -> int:
    from .study.cells import claim_results, describe, emit_makefile, load_study
    from .study.executors import run_study

    _enter_study(args.study)
    if args.datasets or args.prepare_data:  # before any network is built: weights need not be there yet
        study = load_study(args.study, check_networks=False)
        if args.datasets:
            print("\n".join(dict.fromkeys(cell.config.dataset for cell in study.cells)))
            return 0
        return _prepare_study_data(study)
    if args.estimate is not None:  # no network is built: the estimate needs neither weights nor data
        from .study.estimate import SPLIT_SIZES, estimate, measured_rate

        source = "given"
        if args.estimate is MEASURED:
            args.estimate, source = measured_rate()
        table = estimate(load_study(args.study, check_networks=False), args.estimate)
        if table.empty:
            covered = list(SPLIT_SIZES)
            raise ConfigError(f"{args.study}: no dataset with published split sizes to estimate "
                              f"(the estimate covers {', '.join(covered[:-1])} and {covered[-1]})")
        print(f"{args.study} at {args.estimate:g} training images/s ({source}; evaluation 3x faster per image):")
        print(table.round({"hours": 1, "hours_per_run": 2}).to_string(index=False))
        return 0
    study = load_study(args.study)
    from .study.preflight import check_study_indexes

    check_study_indexes(study)  # its indexes block against the embeddings and test items, before any cell trains
    if args.emit_make:
        from .fileio import atomic_write_text

        claim_results(study, mark=False)  # only checked: the cells mark the folder when they run
        atomic_write_text(args.emit_make, emit_makefile(study))
        return 0
    if args.status:
        from .reporting.adequacy import status_lines

        print(describe(study))
        try:
            print("\n".join(status_lines(study)))
        except Exception as error:  # a damaged record must not hide the cells' states above
            print(f"convergence, power and cost not computed: {type(error).__name__}: {error}")
        return 0
    from .study.preflight import check_study_machine
    from .study.cells import RunFailed

    if args.executor != "slurm":  # the cells run on this machine: its device and memory must do for them
        check_study_machine(study)
    claim_results(study)
    try:
        run_study(study, jobs=args.jobs, executor=args.executor)
    except RunFailed as failed:  # the report still covers every cell, the failed ones marked
        if not args.no_report:
            report_and_readme(study.path)
        print(f"dmlbench: {failed}", file=sys.stderr)
        return 1
    return 0 if args.no_report else report_and_readme(study.path)


def cmd_compare(args) -> int:
    import tempfile

    from .paths import use_study_results
    from .study.cells import claim_folder, load_study
    from .study.compare import BASE_STUDY, STUDY_FILE, comparison_study, plan_lines, ranking_lines, write_study
    from .study.executors import run_study

    derived = comparison_study(args.loss, miner=args.miner, loss_kwargs=_yaml_mapping(args.loss_kwargs, "--loss-kwargs"),
                               space=_yaml_mapping(args.space, "--space") if args.space else None,
                               base=args.study or BASE_STUDY, seeds=args.seeds)
    if args.out:
        os.environ["DMLBENCH_RESULTS"] = str(args.out.absolute())
    folder = use_study_results(derived["name"])
    if args.estimate:  # nothing written: the derived study is read from a temporary folder
        with tempfile.TemporaryDirectory() as scratch:
            print("\n".join(plan_lines(load_study(write_study(derived, Path(scratch)), check_networks=False))))
        return 0
    claim_folder(derived["name"], args.study or BASE_STUDY)  # before anything is written there
    study = load_study(write_study(derived, folder))
    print("\n".join(plan_lines(study)), flush=True)
    run_study(study, jobs=args.jobs)
    report_and_readme(folder / STUDY_FILE, readme=False)
    print("\n".join(ranking_lines(folder, args.loss)))
    return 0


def _yaml_mapping(text: str, option: str) -> dict:
    """An option's YAML mapping, or an error naming the option."""
    try:
        value = load_yaml(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{option}: cannot parse {text!r}: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{option}: expected a mapping such as '{{margin: 0.1}}', got {text!r}")
    return value


def cmd_tune(args) -> int:
    from .study.cells import claim_results, load_study, search_state
    from .study.tuner import tune

    _enter_study(args.study)
    study = load_study(args.study)
    if not study.searches:
        raise ConfigError(f"{args.study}: no tuning block, so no search to run")
    claim_results(study)
    searches = [study.search(args.search)] if args.search else study.searches
    for search in searches:
        best = None if search.is_done() else tune(search, max_trials=args.trials)  # a reused one is read only
        print(f"{search.search_id}: {search_state(search)}"
              + (f"; best {search.spec.objective} {best['value']:.4f} with {best['values']}" if best else ""))
    return 0


def cmd_indexes(args) -> int:
    from .study.cells import load_study
    from .study.indexes import run_indexes

    _enter_study(args.study)
    study = load_study(args.study, check_networks=False)
    if args.costs:
        return _print_structure_costs(study)
    counts = run_indexes(study, log=print)
    return 0 if counts["computed"] or counts["done"] else 1


def _add_indexes_command(sub) -> None:
    p = sub.add_parser("indexes", help="serve every finished run's test embeddings by similarity-search indexes "
                       "(the study's indexes: block), measuring recall, speed and memory")
    _add_study_option(p, default=DEFAULT_STUDY)
    p.add_argument("--costs", action="store_true", help="compute nothing: print each run's rho and the share of "
                   "distances each exact structure computed, with their correlation over runs")
    p.set_defaults(func=cmd_indexes)


def _print_structure_costs(study) -> int:
    """The exact structures' share of distance computations per run against its rho, and the correlations."""
    from .reporting.metric_costs import command_lines
    from .study.indexes import read_results

    if study.indexes is None:
        raise ConfigError(f"{study.path}: has no indexes: block, so no index evaluation to read")
    results = read_results(study.indexes, [cell.run_id for cell in study.cells])
    print("\n".join(command_lines(results)))
    return 0 if results else 1


def cmd_search(args) -> int:
    from .study import search

    if args.action == "build":
        if args.id is not None or args.image is not None:
            raise ConfigError("'search build' indexes --images FOLDER or --split; --id and --image are for 'search query'")
        out = search.build(args.run, images=args.images, split=args.split or "test", family=args.index,
                           name=args.name, checkpoint=args.checkpoint)
        manifest = search.read_json(out / "manifest.json")
        print(f"indexed {len(manifest['items'])} images with run {manifest['run_id']} ({args.index}) as index "
              f"{out.name!r}, now the run's latest: {out}")
        if manifest.get("skipped"):
            print(search.skipped_line(manifest["skipped"], args.images))
        return 0
    if args.action == "serve":
        given = [flag for flag, value in (("--image", args.image), ("--id", args.id), ("--grid", args.grid),
                                          ("--images", args.images), ("--split", args.split)) if value is not None]
        if given:
            raise ConfigError(f"'search serve' reads its queries from standard input, one a line (an image path or "
                              f"'id N'), and writes each grid beside the index: {', '.join(given)} is not for serve")
        try:
            search.serve(args.run, name=args.name, k=args.k, checkpoint=args.checkpoint)
        except KeyboardInterrupt:
            print("\ndmlbench: search serve stopped (interrupted)", file=sys.stderr)
            return INTERRUPTED_EXIT
        return 0
    answer = search.query(args.run, image=args.image, item=args.id, k=args.k, name=args.name,
                          grid=args.grid, checkpoint=args.checkpoint)
    for line in search.answer_lines(answer):
        print(line)
    return 0


def _cells_at_once(value: str) -> int:
    """--jobs: a whole number, at least 1."""
    try:
        jobs = int(value)
    except ValueError:
        jobs = 0
    if jobs < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of cells at once, at least 1; got {value!r}")
    return jobs


def _prepare_study_data(study) -> int:
    """Every dataset of the study found (or downloaded) and, for the benchmarks, decoded into the
    cache for each crop size the study uses."""
    from .datasets import load_dataset
    from .datasets.benchmarks import PHOTO_DATASETS, prepare_benchmark

    needs = dict.fromkeys((c.config.dataset, c.config.data_root, c.config.image_size, c.config.fold)
                          for c in study.cells)
    for dataset, root, image_size, fold in needs:
        if dataset in PHOTO_DATASETS:
            print(prepare_benchmark(dataset, root, image_size=image_size))
        else:
            splits = load_dataset(dataset, root=root, **({} if fold is None else {"fold": fold}))
            print(("" if fold is None else f"fold {fold}: ") + _describe_splits(dataset, splits))
    return 0


def _describe_splits(name: str, splits) -> str:
    """The dataset's own summary (its class's ``describe``, e.g. han-typefaces' counts), else the split sizes."""
    from .datasets import DATASETS

    describe = getattr(DATASETS.get(name), "describe", None)
    if describe is not None:
        return describe(splits)
    return (f"{name}: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)} "
            f"({splits.source.get('where', '')})")


def report_and_readme(study: Path, readme: bool = True) -> int:
    """The study's report in its own results folder (with links to the runs it reuses); the README's
    results blocks are refreshed from the default study's results in results/ only."""
    from .paths import DEFAULT_STUDY, results_dir
    from .reporting.readme import describes_repo_results, update_readme
    from .reporting.report import build_report
    from .study.cells import claim_results, link_reused_runs, load_study

    _enter_study(study)
    from .study.baselines import ensure_baselines

    loaded = load_study(study, check_networks=False)
    claim_results(loaded)
    link_reused_runs(loaded)
    # raw pixels and the untrained network beside the cells (seconds each; a finished record is kept)
    ensure_baselines([cell.config for cell in loaded.cells if cell.role != "tuned"], results_dir())
    print(build_report(study))
    if readme and loaded.name == DEFAULT_STUDY and describes_repo_results():  # a rerun elsewhere leaves them alone
        update_readme()
    return 0


def cmd_report(args) -> int:
    from .study.cells import load_study

    _enter_study(args.study)
    load_study(args.study, check_networks=False)  # a bad study file fails here, naming the problem
    return report_and_readme(args.study, readme=not args.no_readme)


def cmd_budget(args) -> int:
    """The training-length ablation: each budget's ranking against the longest's (dmlbench.reporting.budget)."""
    from .paths import study_results_dir
    from .reporting.budget import budget_lines, budget_runs, budget_table
    from .study.cells import load_study

    study = load_study(args.study, check_networks=False)
    default = args.default_results or study_results_dir("default")
    runs = budget_runs(Path(default) / "runs", study_results_dir(study.name) / "runs", study)
    cells, taus = budget_table(runs) if not runs.empty else (runs, runs)
    if args.table and not cells.empty:
        print(cells.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    wanted = {c.config.epochs for c in study.cells} | {int(runs["epochs"].min())} if not runs.empty else set()
    missing = sorted(wanted - set(cells["epochs"])) if not cells.empty else sorted(wanted)
    if missing or cells.empty or cells.groupby("epochs").size().min() < len({(c.config.loss, c.config.miner)
                                                                                for c in study.cells}):
        print(f"INCOMPLETE: the ablation lacks cells at {missing or 'some budgets'} epochs; no verdict on the budget")
        return 1
    print("\n".join(budget_lines(cells, taus)))
    return 0


def cmd_pretrain(args) -> int:
    """``make pretrain``: each fold's pretrained glyph backbone (dmlbench.training.pretrain), made unless the
    shipped one is current; with --study, only when the study uses a pretrained network; --verify retrains into
    a temporary folder and compares the tensors with the shipped ones."""
    from .models import MODELS
    from .study.cells import load_study
    from .training.pretrain import pretrain_folds, verify_folds

    from .datasets.typefaces import HanTypefaces

    folds = args.folds if args.folds else list(range(HanTypefaces.spec.folds))
    if args.study is not None and not any(getattr(MODELS.get(cell.config.model), "per_fold", False)
                                          for cell in load_study(args.study, check_networks=False).cells):
        print(f"{args.study}: no cell uses a pretrained network; nothing to pretrain")
        return 0
    if args.verify:
        return verify_folds(folds)
    pretrain_folds(folds, force=args.force)
    return 0


def _add_pretrain_command(sub) -> None:
    p = sub.add_parser("pretrain", help="pretrain the glyph backbone of each han-typefaces fold on its pretraining "
                       "pool (pretrained/han-typefaces/); kept when current")
    p.add_argument("--study", type=Path, default=None, help="only when this study file uses a pretrained network")
    p.add_argument("--folds", type=int, nargs="+", choices=range(3), help="which folds (default: all three)")
    p.add_argument("--force", action="store_true", help="retrain even when the shipped weights are current")
    p.add_argument("--verify", action="store_true", help="retrain into a temporary folder and compare the weights "
                   "with the shipped ones (exit 1 when they differ)")
    p.set_defaults(func=cmd_pretrain)


def cmd_tuning(args) -> int:
    """A tuned study's searches: epochs per search, each choice's gap against the seeds' noise, the
    winners' places in their ranges, the losses tied with the best after tuning."""
    from .reporting.search_audit import command_lines

    lines, status = command_lines(args.study, args.results)
    print("\n".join(lines))
    return status


def cmd_agreement(args) -> int:
    """Does the miniature resemble the field? A study's ranking of its cells against the published
    fair-protocol rankings and a reference study's (dmlbench.reporting.field)."""
    from .reporting.field import command_lines

    lines, status = command_lines(args.study, args.reference, args.results, args.reference_results,
                                  resamples=args.resamples)
    print("\n".join(lines))
    return status


MEASURED = object()  # --estimate without a number: the throughput the GPU check measured


def _positive(kind: type, what: str):
    """An argparse type: a number of ``kind`` above 0, else an error naming the value."""
    def parse(value: str):
        try:
            number = kind(value)
        except ValueError:
            number = 0
        if not number > 0:
            raise argparse.ArgumentTypeError(f"expected {what} above 0; got {value!r}")
        return number
    return parse


def cmd_data(args) -> int:
    from .datasets import DATASETS
    from .datasets.benchmarks import PHOTO_DATASETS

    DATASETS.get(args.name)
    if args.name in PHOTO_DATASETS:
        return _data_benchmark(args)
    if args.name == "han-typefaces":
        from .datasets.typefaces import FONT_PACKAGES, discover_faces

        if args.action == "locate":
            faces = discover_faces(FONT_PACKAGES)  # a missing package fails naming it and the install command
            print(f"{len(faces)} faces in {len(FONT_PACKAGES)} Debian font packages")
            return 0
        dataset = DATASETS.get(args.name)
        for fold in range(dataset.folds):  # every fold is built at once the first time, then read from the cache
            print(f"fold {fold}: " + _describe_splits(args.name, dataset.load(fold=fold)))
        return 0
    if args.name != "fashion-mnist":
        raise ConfigError(f"'dmlbench data {args.action}' knows fashion-mnist, han-typefaces and "
                          f"{', '.join(PHOTO_DATASETS)}, not {args.name!r}")
    from .datasets.fashion_mnist import locate

    if args.action == "locate":
        paths, where = locate(args.root, allow_download=False)
        print(where)
        return 0
    splits = DATASETS.get(args.name).load(root=args.root)
    print(_describe_splits(args.name, splits))
    return 0


def _data_benchmark(args) -> int:
    """locate: print the layout folder. prepare: find the layout, or download, verify and unpack it
    (where the network allows), then decode every image once into the cache for --image-size crops."""
    from .datasets.benchmarks import locate_layout, prepare_benchmark

    if args.action == "locate":
        folder, where = locate_layout(args.name, args.root)
        print(f"{folder} ({where})")
        return 0
    if args.check:
        from .datasets.check import check_prepared

        summary, ok = check_prepared(args.name, args.root, image_size=args.image_size, workers=args.workers)
        print(summary)
        return 0 if ok else 1
    print(prepare_benchmark(args.name, args.root, image_size=args.image_size, download=not args.no_download,
                            url=args.url, subset=args.subset, workers=args.workers))
    return 0


def cmd_readme(args) -> int:
    from .reporting.readme import check_readme, update_readme

    if args.check:
        problem = check_readme()
        if problem:
            print(problem, file=sys.stderr)
            return 1
        print("the generated blocks of README.md and docs/ are current")
        return 0
    update_readme()
    print("refreshed the generated blocks of README.md and docs/ from the results files")
    return 0


def cmd_bench(args) -> int:
    from .bench.cli import main as bench

    return bench([args.what, *args.options])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmlbench", description="A reproducible deep metric learning study.")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the installed dmlbench version and stop")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help="list losses, miners, samplers, datasets and models")
    p.add_argument("what", nargs="?", choices=["losses", "miners", "samplers", "datasets", "models"],
                   help="one section only (default all five)")
    p.set_defaults(func=cmd_list)

    _add_run_command(sub)
    _add_study_command(sub)
    _add_compare_command(sub)

    p = sub.add_parser("report", help="build results/report.html from the finished runs")
    _add_study_option(p, default=DEFAULT_STUDY)
    p.add_argument("--no-readme", action="store_true", help="leave the README's results block alone")
    p.set_defaults(func=cmd_report)

    _add_data_command(sub)

    p = sub.add_parser("tune", help="run a study's hyperparameter searches (its tuning block), trials until each budget is spent")
    _add_study_option(p, required=True)
    p.add_argument("--search", help="one search's id ('dmlbench study FILE --status' lists them); default every one")
    p.add_argument("--trials", type=_positive(int, "a whole number of trials"), help="at most this many trials here "
                   "(a Slurm array task: 1); default until the budget is spent")
    p.set_defaults(func=cmd_tune)

    _add_indexes_command(sub)

    p = sub.add_parser("budget", help="the training-length ablation: each budget's ranking of the cells against "
                       "the longest budget's (Kendall's tau)")
    _add_study_option(p, default=Path("studies/budget.yaml"), what="the ablation's study file")
    p.add_argument("--default-results", type=Path, default=None, metavar="DIR",
                   help="the results folder holding the 1x runs (default: the default study's)")
    p.add_argument("--table", action="store_true", help="also print every cell's mean at every budget")
    p.set_defaults(func=cmd_budget)

    for add in (_add_agreement_command, _add_tuning_command, _add_pretrain_command, _add_search_command):
        add(sub)

    p = sub.add_parser("bench", help="benchmarks against pytorch-metric-learning (results/bench/)")
    from .bench.cli import BENCHMARKS

    p.add_argument("what", choices=BENCHMARKS, help="which benchmark")
    p.add_argument("options", nargs=argparse.REMAINDER, help="options of the benchmark (see --help after its name)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("readme", help="refresh (or --check) the generated blocks of README.md and docs/ from results/")
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 naming the first block that is "
                   "out of date")
    p.set_defaults(func=cmd_readme)
    for command in sub.choices.values():  # -v after the command's name as well as before it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


VERBOSE_HELP = "log progress, and stream notebook output"
DEFAULT_STUDY = Path("studies/default.yaml")


def _version() -> str:
    """The installed distribution's version (the package's own where it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dmlbench")
    except PackageNotFoundError:
        from . import __version__

        return __version__


def _add_study_option(p: argparse.ArgumentParser, *, default: Path | None = None, required: bool = False,
                      what: str = "the study file") -> None:
    """--study FILE, spelt the same in every command that reads a study."""
    shown = f" (default {default})" if default else ""
    p.add_argument("--study", type=Path, default=default, required=required, metavar="FILE", help=what + shown)


def _add_run_command(sub) -> None:
    p = sub.add_parser("run", help="run one cell through the experiment notebook (papermill)")
    _add_study_option(p, what="the study file whose cell to run (with --cell)")
    p.add_argument("--cell", help="run id of the cell (with --study)")
    p.add_argument("--loss", help="loss name or package.module:Class")
    p.add_argument("--miner", help="miner name or package.module:Class")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any RunConfig setting, value in YAML (repeatable)")
    p.add_argument("--run-dir", help="where to write the run (default: the results folder's adhoc/<run id>)")
    p.set_defaults(func=cmd_run)


def _add_study_command(sub) -> None:
    from .study.cluster import EXECUTORS

    p = sub.add_parser("study", help="run every unfinished cell of a study, then the report")
    _add_study_option(p)
    p.add_argument("study_file", nargs="?", type=Path, metavar="FILE", help="the study file, as --study FILE "
                   "(the older spelling)")
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="where the cells run: here (local), as submitit jobs here (submitit-local), or as a Slurm "
                        "job array with the study file's slurm: settings (slurm); default local")
    p.add_argument("--jobs", type=_cells_at_once, metavar="N",
                   help="cells run at once (local, submitit-local: default 1; slurm: default the study's "
                        "array_parallelism)")
    p.add_argument("--no-report", action="store_true", help="run the cells only; build no report")
    p.add_argument("--emit-make", type=Path, metavar="MAKEFILE", help="write a makefile with one target per cell instead of running")
    p.add_argument("--status", action="store_true", help="list the cells and whether they are done")
    p.add_argument("--datasets", action="store_true", help="print the study's datasets and stop")
    p.add_argument("--prepare-data", action="store_true",
                   help="find or download the study's datasets, build their caches, and stop")
    p.add_argument("--estimate", type=_positive(float, "a number of training images per second"), nargs="?",
                   const=MEASURED, metavar="IMAGES_PER_S",
                   help="print the study's run time at this full-step throughput (dmlbench bench train) and stop; "
                        "without a number, at the CUDA throughput the GPU check measured (results/bench/train-cuda.csv)")
    p.set_defaults(func=cmd_study)


def _add_compare_command(sub) -> None:
    p = sub.add_parser("compare", help="rank a new loss among the shipped ones: its cells, its search and its tuned "
                       "cells run at the tuned study's settings and budget; every shipped run and search is reused")
    p.add_argument("loss", help="the loss: package.module:Class (e.g. my_losses:SquaredTripletLoss) or a registered name")
    p.add_argument("--miner", help="its miner (default: its paper's, else none: every tuple)")
    p.add_argument("--loss-kwargs", default="{}", metavar="YAML", help="its keyword arguments, e.g. '{margin: 0.1}'")
    p.add_argument("--space", metavar="YAML", help="ranges of its own arguments to search beside the shared settings, "
                   "e.g. '{margin: {low: 0.05, high: 0.5}}' (default: the shared settings only)")
    _add_study_option(p, what="the study to compare against (default the repository's studies/tuned.yaml)")
    p.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",")], metavar="0,1,2",
                   help="these seeds only (default the study's)")
    p.add_argument("--out", type=Path, metavar="DIR", help="the comparison's results folder (default results/compare-<loss>/)")
    p.add_argument("--jobs", type=_cells_at_once, metavar="N", help="cells (and searches) at once (default 1)")
    p.add_argument("--estimate", action="store_true", help="print what would run and how long it should take, and stop")
    p.set_defaults(func=cmd_compare)


def _add_agreement_command(sub) -> None:
    p = sub.add_parser("agreement", help="does the miniature resemble the field? Kendall's tau between a study's "
                       "ranking of its cells and the published fair-protocol rankings (and a reference study's)")
    _add_study_option(p, default=DEFAULT_STUDY)
    p.add_argument("--reference", type=Path, default=None, metavar="FILE",
                   help="a second study to rank beside it (default: the study file's reference_study, if any)")
    p.add_argument("--results", type=Path, default=None, metavar="DIR",
                   help="the study's results folder (default: its own, results/<name>/)")
    p.add_argument("--reference-results", type=Path, default=None, metavar="DIR",
                   help="the reference study's results folder (default: its shipped one)")
    p.add_argument("--resamples", type=_positive(int, "a whole number of bootstrap draws"), default=2000,
                   help="bootstrap draws over folds and seeds (default 2000)")
    p.set_defaults(func=cmd_agreement)


def _add_tuning_command(sub) -> None:
    p = sub.add_parser("tuning", help="audit a tuned study's searches: epochs each trained, each winner's gap against "
                       "the seeds' noise, winners' places in their ranges, the losses tied with the best after tuning")
    _add_study_option(p, default=Path("studies") / "tuned.yaml")
    p.add_argument("--results", type=Path, default=None, metavar="DIR",
                   help="the study's results folder (default: its own, results/<name>/)")
    p.set_defaults(func=cmd_tuning)


def _add_search_command(sub) -> None:
    p = sub.add_parser("search", help="index images with a trained run's network, and query the index")
    p.add_argument("action", choices=["build", "query", "serve"], help="build an index; query one; or serve one: "
                   "load it once and answer queries read from standard input, one a line (an image path or 'id N'; "
                   "an empty line ends)")
    p.add_argument("run", help="a run folder, or a run id under the results folder's runs/")
    p.add_argument("--images", type=Path, help="build: index every image under this folder")
    p.add_argument("--split", choices=["test", "gallery"], help="build: index this split of the run's dataset "
                   "(default test)")
    p.add_argument("--index", default="hnsw", help="build: the faiss index family (default hnsw; another name "
                   "fails, listing the families an index beside a run can use)")
    p.add_argument("--name", help="the index's name beside the run: letters, digits, '-', '_', '.' (build's default: "
                   "the folder's name, or the split; query's and serve's: the run's latest build)")
    p.add_argument("--image", help="query: an image file")
    p.add_argument("--id", type=int, help="query: an item of the index (it is left out of its own answers)")
    p.add_argument("-k", type=_positive(int, "a whole number of neighbours"), default=8,
                   help="query, serve: how many neighbours to print and draw (default 8)")
    p.add_argument("--grid", help="query: where to write the retrieval grid (default beside the index)")
    p.add_argument("--checkpoint", help="a checkpoint file to use instead of the run's (same settings only)")
    p.set_defaults(func=cmd_search)


def _add_data_command(sub) -> None:
    p = sub.add_parser("data", help="find (or download) a dataset's files and build its cache")
    p.add_argument("action", choices=["locate", "prepare"], help="locate: say where the files are; prepare: "
                   "find or download them and build the cache")
    p.add_argument("name", help="a dataset's name ('dmlbench list datasets')")
    p.add_argument("--root", help="look only here (a benchmark missing there is downloaded into it)")
    p.add_argument("--image-size", type=_positive(int, "a whole number of pixels"), default=224, help="benchmarks: the crop size the cache is decoded for")
    p.add_argument("--no-download", action="store_true", help="benchmarks: fail instead of downloading")
    p.add_argument("--url", help="benchmarks: a mirror's base URL for the official archives")
    p.add_argument("--check", action="store_true", help="benchmarks: verify a prepared dataset (counts, every image "
                   "decodable, the cache against the lists) and print a summary; exit 1 if a check fails")
    p.add_argument("--subset", action="store_true", help="benchmarks: accept a layout whose counts differ from the "
                   "published ones (a deliberate subset; a run needs the setting data_subset: true)")
    p.add_argument("--workers", type=_positive(int, "a whole number of processes"),
                   help="benchmarks: processes that decode the images (default: one per core)")
    p.set_defaults(func=cmd_data)


INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
INTERRUPTED = {  # what a Ctrl-C keeps, by command (any other: "run")
    "run": "Finished cells are kept; a cell that was training resumes after its last saved epoch when the same "
           "command runs again.",
    "tune": "Finished trials are kept in the search's storage; the trial that was running is marked failed, and the "
            "same command runs a trial in its place and goes on with the search.",
    "study": "Finished cells and search trials are kept; when the same command runs again, a cell that was training "
             "resumes after its last saved epoch, and a search's trial that was running is run anew.",
}
INTERRUPTED["compare"] = INTERRUPTED["study"]


def _search_working_directory() -> None:
    """Let ``module:Class`` components come from the working directory, as ``python -m dmlbench`` lets
    them, without a file there shadowing a package of the environment (a ``faiss.py`` beside a study
    must not replace faiss): the folder is searched after the environment's packages, here and in the
    notebook kernels (``DMLBENCH_USER_PATH``, read by :func:`dmlbench.registry.import_object`)."""
    here = os.path.realpath(os.getcwd())
    # `python -m dmlbench` put the working directory first; the package itself is imported already
    sys.path[:] = [p for p in sys.path if p != "" and os.path.realpath(p) != here or _holds_dmlbench(p)]
    paths = [p for p in os.environ.get(USER_PATH_ENV, "").split(os.pathsep) if p]
    if here not in paths:
        os.environ[USER_PATH_ENV] = os.pathsep.join([*paths, here])


def _holds_dmlbench(folder: str) -> bool:
    """Whether ``folder`` is where this package was imported from (a checkout run in place)."""
    return os.path.realpath(folder or ".") == os.path.realpath(Path(__file__).resolve().parents[1])


def _one_study_argument(parser: argparse.ArgumentParser, args) -> None:
    """``study FILE`` (the older spelling) and ``study --study FILE`` are the same argument."""
    if args.command != "study":
        return
    if args.study and args.study_file and args.study != args.study_file:
        parser.error(f"study: two study files, {args.study_file} and --study {args.study}; give one")
    args.study = args.study or args.study_file
    if args.study is None:
        parser.error("study: the study file is missing; give it as --study FILE")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _one_study_argument(parser, args)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if args.verbose:
        logging.getLogger("dmlbench").setLevel(logging.INFO)
    _search_working_directory()
    given_results = os.environ.get("DMLBENCH_RESULTS")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        logging.disable(logging.CRITICAL)  # the kernel's shutdown is not news: the line below says what happened
        print(f"\ndmlbench: interrupted. {INTERRUPTED.get(args.command, INTERRUPTED['run'])}", file=sys.stderr)
        return INTERRUPTED_EXIT
    except BrokenPipeError:  # output piped into a reader that stopped (head, less)
        sys.stderr.close()
        return 0
    except (ConfigError, DatasetNotFoundError) as error:
        print(f"dmlbench: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # a failed run (RunFailed), a locked run folder (CellBusy), a full disk
        from .errors import DiskFullError
        from .study.cells import BUSY_EXIT, CellBusy

        print(f"dmlbench: {error}", file=sys.stderr)
        if isinstance(error, DiskFullError):
            return error.exit_status
        return BUSY_EXIT if isinstance(error, CellBusy) else 1
    except OSError as error:  # a full disk where no step named its folder: the results folder's
        from .fileio import disk_full_error, is_disk_full
        from .paths import results_dir

        if not is_disk_full(error):
            raise
        full = disk_full_error(Path(error.filename).parent if error.filename else results_dir())
        print(f"dmlbench: {full}", file=sys.stderr)
        return full.exit_status
    finally:  # a command points the environment at its study's results folder: the caller's comes back
        _restore_results(given_results)


def _restore_results(given: str | None) -> None:
    if given is None:
        os.environ.pop("DMLBENCH_RESULTS", None)
    else:
        os.environ["DMLBENCH_RESULTS"] = given


if __name__ == "__main__":
    sys.exit(main())
