"""Bad inputs a user can give dmlbench, each with the exit code and the line it must answer with.

Every case runs the real command line (``dmlbench.cli.main``) in a scratch folder, on a tiny study
of the tiny Fashion-MNIST, with the results folder pointed into the scratch folder. ``python -m
tests.drills.table`` prints them as the table of the issue's closing note."""

from __future__ import annotations

from dataclasses import dataclass, field

SETTINGS = ["model_kwargs: {channels: [4, 8, 8]}", "embedding_dim: 8", "P: 5", "K: 4", "epochs: 1",
            "iters_per_epoch: 2", "lr: 0.001", "eval_batch_size: 256"]


def study(settings: list[str] | str = SETTINGS, losses: str = "[triplet]", extra: str = "") -> str:
    """A tiny study file's text, with one part replaced or appended."""
    block = settings if isinstance(settings, str) else "\n" + "".join(f"  {line}\n" for line in settings)
    return (f"name: drill\ndatasets: [fashion-mnist]\nsettings: {block.rstrip()}\nlosses: {losses}\n"
            f"miners: [semi-hard]\nseeds: [0]\n{extra}")


def with_setting(line: str) -> str:
    """The tiny study with ``line`` (``key: value``) in its settings, in place of the key's own line."""
    key = line.split(":")[0]
    return study([kept for kept in SETTINGS if kept.split(":")[0] != key] + [line])


@dataclass
class Case:
    """One bad input: the files it needs, the command, and what must come back."""
    name: str
    argv: list[str]
    code: int
    says: str  # a fragment the answering line must hold (a regular expression)
    files: dict[str, str] = field(default_factory=dict)  # path in the scratch folder -> text


def status(name: str, text: str, says: str, code: int = 2) -> Case:
    return Case(name, ["study", "drill.yaml", "--status"], code, says, {"drill.yaml": text})


def runs(name: str, text: str, says: str, code: int = 2) -> Case:
    """The study's real run: the check must stop it before any cell trains."""
    return Case(name, ["study", "drill.yaml", "--no-report"], code, says, {"drill.yaml": text})


CASES = [
    # the study file itself
    Case("study file missing", ["study", "nope.yaml", "--status"], 2, r"nope\.yaml"),
    status("YAML syntax error", "name: drill\nsettings: {lr: 0.1\n", r"drill\.yaml: not valid YAML: line 3"),
    Case("study file is a folder", ["study", "adir.yaml", "--status"], 2, r"adir\.yaml is a folder",
         {"adir.yaml/keep": ""}),
    Case("study file not UTF-8", ["study", "bin.yaml", "--status"], 2, r"bin\.yaml: not a text file in UTF-8",
         {"bin.yaml": "\udcff\udcfe binary"}),
    status("study file is a list", "- a\n- b\n", r"mapping|drill\.yaml"),
    status("empty study file", "", r"drill\.yaml|empty"),
    status("unknown top-level key", study() + "lossses: [triplet]\n", r"lossses"),
    status("unknown loss name", study(losses="[tripplet]"), r"did you mean 'triplet'"),
    status("unknown miner name", study().replace("[semi-hard]", "[semi-hardd]"), r"semi-hard"),
    status("unknown dataset", study().replace("[fashion-mnist]", "[fashion-mnistt]"), r"fashion-mnist"),
    status("unknown model", with_setting("model: resnet9000"), r"resnet9000"),
    status("lr as text", with_setting("lr: fast"), r"lr.*number"),
    status("lr: 1e-3 (YAML 1.1 reads a string)", with_setting("lr: 1e-3"), r"done|to run|run", code=0),
    status("lr: 1E-3", with_setting("lr: 1E-3"), r"done|to run|run", code=0),
    status("lr: .001", with_setting("lr: .001"), r"done|to run|run", code=0),
    status("negative lr", with_setting("lr: -1"), r"lr.*positive"),
    status("zero lr", with_setting("lr: 0"), r"lr.*positive"),
    status("zero epochs", with_setting("epochs: 0"), r"epochs"),
    status("fractional epochs", with_setting("epochs: 2.5"), r"epochs"),
    status("zero P", with_setting("P: 0"), r"\bP\b"),
    status("P as text", with_setting("P: many"), r"\bP\b"),
    status("zero embedding size", with_setting("embedding_dim: 0"), r"embedding_dim"),
    status("unknown schedule", with_setting("lr_schedule: sometimes"), r"lr_schedule"),
    status("settings not a mapping", study(settings="[1, 2]"), r"settings"),
    status("negative seed", study().replace("seeds: [0]", "seeds: [-1]"), r"seed"),
    status("seeds as text", study().replace("seeds: [0]", "seeds: abc"), r"seed"),
    status("unknown loss argument", study(losses="{triplet: {marginn: 0.2}}"), r"marginn"),
    status("loss argument as text", study(losses="{triplet: {margin: big}}"), r"margin"),
    status("unknown setting", with_setting("learning_rate: 0.1"), r"learning_rate"),
]

TUNING = """
tuning:
  trials: 2
  space:
{space}
"""


def tuned(space: str) -> str:
    """The tiny study with a tuning block whose search space for triplet is ``space`` (YAML lines)."""
    return study(extra=TUNING.format(space=space))


def tune(name: str, text: str, says: str, code: int = 2) -> Case:
    return Case(name, ["tune", "--study", "drill.yaml"], code, says, {"drill.yaml": text})


INDEXES = "indexes:\n  families:\n    - {block}\n"

CASES += [
    # one run from the command line
    Case("--cell without --study", ["run", "--cell", "abc"], 2, r"--cell needs --study"),
    Case("--cell of a missing study", ["run", "--study", "nope.yaml", "--cell", "abc"], 2, r"nope\.yaml"),
    Case("--cell naming no cell", ["run", "--study", "drill.yaml", "--cell", "abc"], 2, r"abc",
         {"drill.yaml": study()}),
    Case("run of an unknown loss", ["run", "--loss", "tripplet"], 2, r"did you mean 'triplet'"),
    Case("--set without a value", ["run", "--loss", "triplet", "--set", "lr"], 2, r"lr"),
    Case("--set of an unknown setting", ["run", "--loss", "triplet", "--set", "nosuch=1"], 2, r"nosuch"),
    Case("--set lr=fast", ["run", "--loss", "triplet", "--set", "lr=fast"], 2, r"lr.*number"),
    Case("--run-dir naming a file", ["run", "--loss", "triplet", "--run-dir", "afile.txt"], 2, r"afile\.txt",
         {"afile.txt": "not a folder\n"}),
    # the search command
    Case("search of a missing run", ["search", "build", "no-such-run"], 2, r"no-such-run"),
    Case("search index name climbing out", ["search", "build", "{tmp}/run", "--name", "../../x"], 2, r"\.\./\.\./x"),
    Case("search index name absolute", ["search", "build", "{tmp}/run", "--name", "/tmp/x"], 2, r"/tmp/x"),
    Case("search of an unknown index family", ["search", "build", "{tmp}/run", "--index", "nosuch"], 2, r"nosuch"),
    # tuning
    tune("tune without a tuning block", study(), r"tuning"),
    tune("tuning range low above high", tuned("    losses: {triplet: {margin: {low: 0.5, high: 0.1}}}"), r"margin"),
    tune("tuning range with text", tuned("    settings: {lr: [fast, 0.001]}"), r"lr"),
    tune("tuning P above the class count", tuned("    settings: {P: {low: 2, high: 50, int: true}}"), r"\bP\b"),
    tune("tuning margin below zero", tuned("    losses: {triplet: {margin: {low: -0.5, high: 0.5}}}"), r"margin"),
    tune("tuning K of one", tuned("    settings: {K: {low: 1, high: 4, int: true}}"), r"\bK\b"),
    tune("tuning log range from zero", tuned("    settings: {lr: {low: 0.0, high: 0.1, log: true}}"), r"lr"),
    # checks that belong before training
    runs("pq m not dividing the embedding size", study(extra=INDEXES.format(block="{family: pq, m: 3}")), r"\bm\b"),
    runs("ivf-flat nlist above the items", study(extra=INDEXES.format(block="{family: ivf-flat, nlist: 100000}")),
         r"nlist"),
    runs("unknown index family", study(extra=INDEXES.format(block="{family: nosuch}")), r"nosuch"),
    Case("a data root that holds no data", ["study", "drill.yaml", "--no-report"], 2, r"emptyroot",
         {"drill.yaml": with_setting("data_root: emptyroot"), "emptyroot/README": "nothing here\n"}),
    # other commands
    Case("compare of an unknown loss", ["compare", "tripplet"], 2, r"tripplet"),
    Case("data of an unknown dataset", ["data", "nosuch"], 2, r"nosuch"),
]
