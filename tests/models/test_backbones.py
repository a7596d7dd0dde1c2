"""Backbones with an embedding head (torchvision ResNets, any timm model): shapes, pooling, frozen BatchNorm,
pretrained weights only from local files."""

import pytest
import timm
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


# --- timm backbones: any timm model by name (tiny ones here: resnet10t, timm's test_* models) ---


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Empty Hugging Face and torch hub caches under tmp_path, and every download path of timm raising."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access: {args}")

    import timm.models._builder as builder
    import timm.models._hub as hub

    for module, attr in ((hub, "hf_hub_download"), (hub, "download_url_to_file"),
                         (builder, "load_state_dict_from_url"), (torch.hub, "download_url_to_file")):
        monkeypatch.setattr(module, attr, no_network)
    return tmp_path


@pytest.mark.parametrize("name,size", [("resnet10t", 64), ("test_vit", 64), ("test_mambaout", 64)])
@pytest.mark.parametrize("pooling", ["avg", "max", "avg+max"])
def test_timm_embeds_to_unit_vectors(name, size, pooling):
    torch.manual_seed(0)
    model = MODELS.create("timm", name=name, embedding_dim=16, pooling=pooling)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 16) and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
    assert model.head.in_features == model.feature_dim == model.trunk.num_features


def test_timm_pooling_of_feature_maps_and_tokens():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    cnn = MODELS.create("timm", name="resnet10t", embedding_dim=8).eval()
    maps = cnn.trunk.forward_features(x)  # (B, F, h, w)
    assert maps.shape == (2, cnn.feature_dim, 2, 2)
    for pooling, pooled in (("avg", maps.mean(dim=(2, 3))), ("max", maps.amax(dim=(2, 3))),
                            ("avg+max", maps.mean(dim=(2, 3)) + maps.amax(dim=(2, 3)))):
        cnn.pooling = pooling
        torch.testing.assert_close(cnn(x), torch.nn.functional.normalize(cnn.head(pooled), dim=1))
    vit = MODELS.create("timm", name="test_vit", embedding_dim=8, pooling="token").eval()
    tokens = vit.trunk.forward_features(x)  # (B, 1 class token + 16 patches, F)
    assert tokens.shape == (2, 17, vit.feature_dim) and vit.prefix_tokens == 1
    torch.testing.assert_close(vit(x), torch.nn.functional.normalize(vit.head(tokens[:, 0]), dim=1))
    vit.pooling = "avg"  # patch tokens only, as timm's global_pool="avg"
    torch.testing.assert_close(vit(x), torch.nn.functional.normalize(vit.head(tokens[:, 1:].mean(dim=1)), dim=1))


def test_timm_frozen_batchnorm_keeps_statistics_and_parameters():
    torch.manual_seed(0)
    model = MODELS.create("timm", name="resnet10t", embedding_dim=8, freeze_bn=True)
    bn = model.trunk.bn1
    before = bn.running_mean.clone()
    model.train()
    model(torch.randn(4, 3, 64, 64) * 5 + 3)
    torch.testing.assert_close(bn.running_mean, before)
    assert model.training and not bn.training and not bn.weight.requires_grad
    assert model.head.weight.requires_grad and model.trunk.conv1[0].weight.requires_grad
    free = MODELS.create("timm", name="resnet10t", embedding_dim=8, freeze_bn=False).train()
    free.trunk.load_state_dict(model.trunk.state_dict())
    free(torch.randn(4, 3, 64, 64) * 5 + 3)
    assert free.trunk.bn1.training and not torch.allclose(free.trunk.bn1.running_mean, before)


@pytest.mark.parametrize("name,message", [
    ("resnet50x", r"unknown timm model 'resnet50x' \(close matches: resnet50, .*timm\.list_models\(\)"),
    ("vit_tiny_patch16_22", r"close matches: vit_tiny_patch16_224"),
    ("resnet10t.bogus", r"timm model 'resnet10t' has no pretrained tag 'bogus'; its tags: resnet10t.c3_in1k"),
    ("hf-hub:timm/resnet10t.c3_in1k", r"hub and local-dir names are not taken"),
])
def test_timm_unknown_model_names(name, message):
    with pytest.raises(ConfigError, match=message):
        MODELS.create("timm", name=name)


@pytest.mark.parametrize("kwargs,message", [
    ({"pooling": "mean"}, r"pooling 'mean' is not one of \['avg', 'max', 'avg\+max', 'token'\]"),
    ({"pooling": "token"}, r"pooling 'token' takes the class token, and timm model 'resnet10t' has none"),
    ({"embedding_dim": 0}, "embedding_dim must be a positive integer"),
    ({"model_args": {"drop_rat": 0.1}}, r"timm model 'resnet10t' rejects model_args \{'drop_rat': 0.1\}"),
    ({"model_args": {"pretrained": True}}, r"model_args may not set pretrained: the embedder sets them"),
    ({"weights_file": "/nonexistent/w.pth"}, r"weights_file '/nonexistent/w.pth' for timm model 'resnet10t' does not"),
    ({"dropout": 0.1}, "takes no argument 'dropout'"),
])
def test_timm_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MODELS.create("timm", **({"name": "resnet10t"} | kwargs))


def test_timm_model_args_reach_timm():
    model = MODELS.create("timm", name="test_vit3", embedding_dim=8, model_args={"img_size": 64})
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 8)


def test_timm_pretrained_weights_missing_names_model_and_caches(offline):
    with pytest.raises(ConfigError) as info:
        MODELS.create("timm", name="resnet10t", pretrained=True)
    message = str(info.value)
    for part in ("pretrained timm model 'resnet10t'", "nothing is downloaded",
                 str(offline / "hf" / "models--timm--resnet10t.c3_in1k"),
                 str(offline / "torch" / "hub" / "checkpoints" / "resnet10t_176_c3-f3215ab1.pth"),
                 "timm.create_model('resnet10t', pretrained=True)", "weights_file"):
        assert part in message, part


def reference_weights(name: str, seed: int = 1) -> dict:
    """A randomly initialised timm model's state dict (with its classifier, as timm's files have)."""
    torch.manual_seed(seed)
    return timm.create_model(name).state_dict()


def assert_trunk_holds(model, reference: dict) -> None:
    trunk = model.trunk.state_dict()
    assert trunk and set(trunk) <= set(reference)
    for key, value in trunk.items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize("cache", ["hf", "torch"])
def test_timm_pretrained_weights_come_from_the_local_cache(offline, cache):
    from safetensors.torch import save_file

    reference = reference_weights("resnet10t")
    if cache == "hf":  # the layout huggingface_hub downloads into
        repo = offline / "hf" / "models--timm--resnet10t.c3_in1k"
        (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text("0" * 40)
        save_file(reference, repo / "snapshots" / ("0" * 40) / "model.safetensors")
    else:  # torch.hub's, for the weights' URL
        folder = offline / "torch" / "hub" / "checkpoints"
        folder.mkdir(parents=True)
        torch.save(reference, folder / "resnet10t_176_c3-f3215ab1.pth")
    torch.manual_seed(2)
    model = MODELS.create("timm", name="resnet10t", embedding_dim=8, pretrained=True)
    assert_trunk_holds(model, reference)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_weights_file(offline, suffix):
    from safetensors.torch import save_file

    reference = reference_weights("test_vit")
    path = offline / f"weights{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": reference, "epoch": 3}, path)  # a training checkpoint
    else:
        save_file(reference, path)
    model = MODELS.create("timm", name="test_vit", embedding_dim=8, weights_file=str(path))
    assert_trunk_holds(model, reference)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 8)


def test_timm_weights_of_another_model_are_an_error(offline):
    torch.save(reference_weights("test_resnet"), offline / "other.pth")
    fit = r"(?s)weights in .*other.pth do not fit timm model 'resnet10t'.*size mismatch.*more\)"
    with pytest.raises(ConfigError, match=fit):
        MODELS.create("timm", name="resnet10t", weights_file=str(offline / "other.pth"))
    torch.save({"fc.weight": torch.zeros(3, 3)}, offline / "unrelated.pth")
    with pytest.raises(ConfigError, match=r"leave parameters of timm model 'resnet10t' uninitialised.*conv1"):
        MODELS.create("timm", name="resnet10t", weights_file=str(offline / "unrelated.pth"))


@pytest.mark.parametrize("model,kwargs,normalization,size", [
    ("resnet18", {}, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 224),
    ("timm", {"name": "resnet10t"}, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 176),
    ("timm", {"name": "test_vit"}, ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), 160),
])
def test_normalization_and_image_size_of_the_weights(model, kwargs, normalization, size):
    embedder = MODELS.create(model, embedding_dim=8, **kwargs)
    assert embedder.normalization == normalization and embedder.default_image_size == size
    assert all(isinstance(v, float) for part in embedder.normalization for v in part)


def test_run_config_builds_a_timm_model():
    from dmlbench.config import RunConfig

    RunConfig(model="timm", model_kwargs={"name": "resnet10t"}).validate()
    with pytest.raises(ConfigError, match="unknown timm model 'resnet10"):
        RunConfig(model="timm", model_kwargs={"name": "resnet10"}).validate()
