"""ResNet backbones with an embedding head: shapes, pooling, frozen BatchNorm, local ImageNet weights."""

import pytest
import torch

from dmlbench.errors import ConfigError
from dmlbench.models import MODELS
from dmlbench.models.backbone import cached_weights_path


@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max"])
def test_resnet18_embeds_to_unit_vectors(pooling):
    torch.manual_seed(0)
    model = MODELS.create("resnet18", embedding_dim=32, pooling=pooling)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 32)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


def test_pooling_choices_differ():
    torch.manual_seed(0)
    model = MODELS.create("resnet18", embedding_dim=8, pooling="avg").eval()
    x = torch.randn(2, 3, 64, 64)
    avg = model(x)
    model.pooling = "max"
    assert not torch.allclose(avg, model(x))


def test_frozen_batchnorm_keeps_statistics_and_parameters():
    torch.manual_seed(0)
    model = MODELS.create("resnet18", embedding_dim=8, freeze_bn=True)
    bn = model.trunk[1]
    before = bn.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 64, 64) * 5 + 3)
    torch.testing.assert_close(bn.running_mean, before)
    assert not bn.training and not bn.weight.requires_grad
    free = MODELS.create("resnet18", embedding_dim=8, freeze_bn=False).train()
    free(torch.randn(4, 3, 64, 64) * 5 + 3)
    assert not torch.allclose(free.trunk[1].running_mean, before)


def test_pretrained_weights_come_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path, url = cached_weights_path("resnet18")
    assert str(path).startswith(str(tmp_path)) and url.endswith(path.name)
    with pytest.raises(ConfigError, match=f"expected at {path}, which is missing.*{url}"):
        MODELS.create("resnet18", pretrained=True)
    import torchvision

    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    model = MODELS.create("resnet18", pretrained=True)
    torch.testing.assert_close(model.trunk[0].weight, reference.conv1.weight)


@pytest.mark.parametrize("kwargs,message", [
    ({"pooling": "mean"}, r"pooling 'mean' is not one of \['avg', 'max', 'avg\+max'\]"),
    ({"embedding_dim": 0}, "embedding_dim must be a positive integer"),
    ({"dropout": 0.1}, "takes no argument 'dropout'"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MODELS.create("resnet50", **kwargs)
