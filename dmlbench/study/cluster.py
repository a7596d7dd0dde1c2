"""Where a study's cells may run (the executors' names) and the Slurm settings a study file may
give, checked when the study is loaded (dmlbench.study.executors submits with them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError

EXECUTORS = ("local", "submitit-local", "slurm")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _is_sbatch_value(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


# key: (check, what a valid value is, the AutoExecutor parameter it becomes; None: not a parameter)
SLURM_SETTINGS: dict[str, tuple[Callable[[Any], bool], str, str | None]] = {
    "partition": (_is_name, "a partition name", "slurm_partition"),
    "account": (_is_name, "an account name", "slurm_account"),
    "qos": (_is_name, "a quality-of-service name", "slurm_qos"),
    "constraint": (_is_name, "a node feature expression, e.g. 'a100|h100'", "slurm_constraint"),
    "gpus_per_node": (lambda v: _is_int(v) and v >= 0, "a whole number of GPUs, 0 or more", "gpus_per_node"),
    "cpus_per_task": (lambda v: _is_int(v) and v >= 1, "a whole number of cores, at least 1", "cpus_per_task"),
    "mem_gb": (lambda v: (_is_int(v) or isinstance(v, float)) and v > 0, "a number of gigabytes above 0", "mem_gb"),
    "timeout_min": (lambda v: _is_int(v) and v >= 1, "a whole number of minutes, at least 1", "timeout_min"),
    "array_parallelism": (lambda v: _is_int(v) and v >= 1, "a whole number of cells at once, at least 1",
                          "slurm_array_parallelism"),
    "job_name": (_is_name, "a job name", "name"),
    "log_folder": (_is_name, "a folder path", None),
    "setup": (lambda v: isinstance(v, list) and all(isinstance(line, str) for line in v),
              "a list of shell lines", "slurm_setup"),
    "additional_parameters": (lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_sbatch_value(x)
                                                                   for k, x in v.items()),
                              "a mapping of sbatch option -> value (text, number or true)",
                              "slurm_additional_parameters"),
}
SLURM_DEFAULTS = {"gpus_per_node": 1, "cpus_per_task": 8, "timeout_min": 240}
# sbatch options that a key above gives, or that submitit itself sets (the array, the logs it reads
# back, the signal that requeues a job running out of time): additional_parameters may not set them.
_GIVEN_BY_KEY = {"partition": "partition", "account": "account", "qos": "qos", "constraint": "constraint",
                 "gpus_per_node": "gpus_per_node", "cpus_per_task": "cpus_per_task", "mem": "mem_gb",
                 "time": "timeout_min", "job_name": "job_name"}
_SET_BY_SUBMITIT = ("array", "output", "error", "signal", "open_mode")


def slurm_settings(study_path: Path, raw: Any) -> dict[str, Any]:
    """A study file's ``slurm:`` value, checked: every bad key or value is a ConfigError naming the
    file, the key, the value and what is valid."""
    where = f"{study_path}: slurm"
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with keys {', '.join(SLURM_SETTINGS)}, got {raw!r}")
    unknown = sorted(set(raw) - set(SLURM_SETTINGS), key=str)
    if unknown:
        raise ConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))}; "
                          f"valid keys: {', '.join(SLURM_SETTINGS)}")
    for key, value in raw.items():
        check, valid, _ = SLURM_SETTINGS[key]
        if not check(value):
            raise ConfigError(f"{where}: {key}: expected {valid}, got {value!r}")
    for option in raw.get("additional_parameters") or {}:
        name = option.replace("-", "_")
        if name in _GIVEN_BY_KEY:
            raise ConfigError(f"{where}: additional_parameters: {option!r} is given by the key "
                              f"{_GIVEN_BY_KEY[name]!r}; set that instead")
        if name in _SET_BY_SUBMITIT:
            raise ConfigError(f"{where}: additional_parameters: {option!r} is set by submitit (options it sets: "
                              f"{', '.join(_SET_BY_SUBMITIT)})")
    return dict(raw)
