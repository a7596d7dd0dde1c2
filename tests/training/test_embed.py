"""A finished run's test embeddings recomputed from its checkpoint (dmlbench.training.embed), as the
report does for its t-SNE maps and retrieval grids."""

import pytest
import torch

from dmlbench.config import RunConfig
from dmlbench.datasets import load_dataset
from dmlbench.training.embed import embed_test_split
from dmlbench.training.feeds import forward_embed, image_tensor
from dmlbench.training.loop import build_model
from dmlbench.training.rundir import RunDir

from ..support import tiny_settings


def test_the_test_split_is_embedded_again_by_the_checkpointed_network(tmp_path, tiny_fmnist):
    config = RunConfig(**tiny_settings(eval_batch_size=64))
    splits = load_dataset("fashion-mnist", root=str(tiny_fmnist))
    torch.manual_seed(0)
    model = build_model(config).eval()
    folder = RunDir(tmp_path / "run")
    folder.path.mkdir()
    torch.save({"model": model.state_dict(), "criterion": {}, "epoch": 1, "config": config.to_dict()}, folder.checkpoint)
    embeddings, labels = embed_test_split(folder.path, splits)
    cpu = torch.device("cpu")
    expected = forward_embed(model, [image_tensor(splits.test.images, splits.mean, splits.std, cpu)], cpu)
    assert embeddings.shape == (len(splits.test), config.embedding_dim)  # in batches of 64: every image once
    assert torch.allclose(embeddings, expected, atol=1e-5)
    assert torch.equal(labels, torch.from_numpy(splits.test.labels))


def test_a_run_without_checkpoint_fails_naming_the_file(tmp_path, tiny_fmnist):
    splits = load_dataset("fashion-mnist", root=str(tiny_fmnist))
    with pytest.raises(FileNotFoundError, match=RunDir.CHECKPOINT):
        embed_test_split(tmp_path, splits)
