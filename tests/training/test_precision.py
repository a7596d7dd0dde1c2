"""The precision setting: what each value computes in, how it enters a run's identity, and what a run records.

bf16 autocast is the default ("auto") on CPUs with native bf16 (and on CUDA, as before); a run that
trained in fp32 before the setting existed keeps its id, and every run that computes otherwise gets a new one.
"""

import dataclasses

import pytest
import torch

from dmlbench.config import PRECISIONS, RunConfig
from dmlbench.datasets import load_dataset
from dmlbench.errors import ConfigError
from dmlbench.training.feeds import autocast_dtype, forward_embed, native_bf16_cpu, precision_name
from dmlbench.training.loop import train
from dmlbench.training.record import build_record

from ..support import tiny_settings

CPU = torch.device("cpu")


def test_each_precision_autocasts_as_documented_on_the_cpu():
    assert autocast_dtype(CPU, "fp32") is None
    assert autocast_dtype(CPU, "bf16") is torch.bfloat16
    assert autocast_dtype(CPU, "auto") is (torch.bfloat16 if native_bf16_cpu() else None)
    with pytest.raises(ConfigError, match="'fp16' needs CUDA.*'bf16', 'fp32' or 'auto'"):
        autocast_dtype(CPU, "fp16")
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]


def test_an_unknown_precision_names_the_choices():
    with pytest.raises(ConfigError, match="unknown precision 'half'; valid choices: " + ", ".join(PRECISIONS)):
        RunConfig(precision="half").validate()


def test_fp32_keeps_the_ids_of_runs_recorded_before_the_setting():
    settings = RunConfig(dataset="han-typefaces").to_dict()
    del settings["precision"]  # a metrics.json written before the setting existed
    old = RunConfig.from_record(settings)
    assert old.precision == "fp32"
    assert old.config_hash() == dataclasses.replace(old, precision="fp32").config_hash()
    assert "precision" not in old.hashed_dict()
    hashes = {p: dataclasses.replace(old, precision=p).config_hash() for p in PRECISIONS}
    assert len(set(hashes.values())) == len(PRECISIONS)  # every other precision is another run
    assert RunConfig().precision == "auto"


def test_torch_compile_is_part_of_the_identity_when_on():
    config = RunConfig()
    assert dataclasses.replace(config, torch_compile=False).config_hash() == config.config_hash()
    assert dataclasses.replace(config, torch_compile=True).config_hash() != config.config_hash()


def test_bf16_embeddings_come_from_a_bf16_forward_pass():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(32, 16))
    x = torch.randn(50, 32)
    fp32 = forward_embed(network, [x], CPU, "fp32")
    bf16 = forward_embed(network, [x], CPU, "bf16")
    assert fp32.dtype == bf16.dtype == torch.float32
    torch.testing.assert_close(fp32, network(x).detach())
    assert not torch.equal(fp32, bf16)  # rounded through bf16 ...
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)  # ... to about its three digits


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_run_records_its_precision_and_repeats_its_numbers(precision, isolated):
    config = RunConfig(**tiny_settings(precision=precision))
    splits = load_dataset("fashion-mnist")
    first, second = (train(config, splits, progress=False) for _ in range(2))
    record = build_record(first, splits, wall_time_s=1.0, run_id=config.run_id())
    assert record["precision"] == precision and record["torch_compile"] is False
    assert record["config"]["precision"] == precision
    assert first.test_metrics == second.test_metrics  # the same seed, threads and settings: the same numbers
    assert torch.equal(first.test_embeddings, second.test_embeddings)
